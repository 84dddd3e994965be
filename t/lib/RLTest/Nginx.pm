package RLTest::Nginx;

# A real nginx with the module loaded, for the suites that need what one
# Test::Nginx server cannot give: several edge nodes at once, a master with
# workers, reloads, and clients running in parallel.

use strict;
use warnings;

use File::Spec;
use File::Temp qw(tempdir);
use HTTP::Tiny;
use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(sleep time);

use RLTest::Redis;

my @started;

sub nginx_binary { $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx' }

sub module_path {
    my $so = $ENV{TEST_NGINX_LOAD_MODULES} || 'build/ngx_http_ratelimit_module.so';
    die "module $so not built (run make)\n" unless -f $so;
    return File::Spec->rel2abs($so);
}

# RLTest::Nginx->start(http => $text, workers => 2): $text goes inside
# http {}; "%PORT%" in it is replaced by the port this instance listens on.
sub start {
    my ($class, %opt) = @_;
    my $self = bless {
        port    => $opt{port} || RLTest::Redis::free_port(),
        workers => $opt{workers} || 2,
        http    => $opt{http},
        main    => $opt{main} || '',
    }, $class;
    $self->{dir} = tempdir('rltest-nginx-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    mkdir "$self->{dir}/$_" for qw(conf logs html);
    chmod 0755, $self->{dir};
    $self->write_conf;

    local $self->{prefix} = [valgrind()];
    my $out = $self->run_nginx();
    die "nginx did not start: $out\n" . $self->error_log if $?;

    for (1 .. (valgrind() ? 2400 : 200)) {
        last if RLTest::Redis::port_open($self->{port});
        sleep 0.025;
    }
    die "nginx is not listening on $self->{port}\n" . $self->error_log
        unless RLTest::Redis::port_open($self->{port});

    push @started, $self;
    return $self;
}

# Runs `nginx -t` on such a configuration; returns (exit code, output).
sub check_config {
    my ($class, %opt) = @_;
    my $self = bless {
        port    => RLTest::Redis::free_port(),
        workers => 1,
        http    => $opt{http},
        main    => '',
    }, $class;
    $self->{dir} = tempdir('rltest-nginx-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    mkdir "$self->{dir}/$_" for qw(conf logs html);
    $self->write_conf;
    my $out = $self->run_nginx('-t');
    return ($? >> 8, $out);
}

sub write_conf {
    my ($self, $http) = @_;
    $self->{http} = $http if defined $http;
    my $module = module_path();
    my $body = $self->{http};
    $body =~ s/%PORT%/$self->{port}/g;
    my $user = $> == 0 ? "user root;\n" : '';

    open my $fh, '>', "$self->{dir}/conf/nginx.conf" or die $!;
    print $fh <<"CONF";
load_module $module;
${user}daemon on;
master_process on;
worker_processes $self->{workers};
error_log logs/error.log info;
pid logs/nginx.pid;
$self->{main}
events { worker_connections 1024; }

http {
    access_log off;
    default_type text/plain;
$body
}
CONF
    close $fh;
}

# RLTEST_VALGRIND="valgrind options": nginx (master and workers, which it
# forks) runs under valgrind; the options should name a --log-file with %p.
# Only the server itself, not `nginx -s` or `nginx -t`.
sub valgrind {
    my $opts = $ENV{RLTEST_VALGRIND};
    return () unless defined $opts && $opts =~ /\S/;
    return ('valgrind', '-q', split ' ', $opts);
}

# Runs nginx with @args; $self->{prefix} (a command such as valgrind) goes
# first when set.
sub run_nginx {
    my ($self, @args) = @_;
    my @prefix = @{ $self->{prefix} || [] };
    my $cmd = join ' ', @prefix, nginx_binary(), '-p', "$self->{dir}/",
        '-c', 'conf/nginx.conf', @args;
    return scalar `$cmd 2>&1`;
}

sub port { $_[0]{port} }

sub url { "http://127.0.0.1:$_[0]{port}$_[1]" }

sub master_pid {
    my ($self) = @_;
    open my $fh, '<', "$self->{dir}/logs/nginx.pid" or return;
    my $pid = <$fh>;
    chomp $pid;
    return $pid;
}

sub error_log {
    my ($self) = @_;
    open my $fh, '<', "$self->{dir}/logs/error.log" or return '';
    local $/;
    return scalar <$fh>;
}

# Sends one request; returns HTTP::Tiny's response hash.
sub request {
    my ($self, $method, $path, %headers) = @_;
    my $body = delete $headers{_body};
    my $http = HTTP::Tiny->new(keep_alive => 0, timeout => 10);
    return $http->request($method, $self->url($path),
                          { headers => \%headers,
                            defined $body ? (content => $body) : () });
}

sub get {
    my ($self, $path, %headers) = @_;
    return $self->request('GET', $path, %headers);
}

# A GET with header bytes exactly as given (HTTP::Tiny refuses bytes over
# 0x7f, which real callers do send); returns the status code.
sub raw_get {
    my ($self, $path, %headers) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                     PeerPort => $self->{port},
                                     Timeout => 10) or return 599;
    my $req = "GET $path HTTP/1.0\r\nHost: localhost\r\n"
        . join('', map { "$_: $headers{$_}\r\n" } sort keys %headers) . "\r\n";
    print $sock $req;
    my $status_line = <$sock>;
    close $sock;
    return $status_line && $status_line =~ m{^HTTP/1\.\d (\d{3})} ? $1 : 599;
}

# Replaces the configuration and reloads; waits until the old workers are
# gone, so that what answers next runs the new configuration.
sub reload {
    my ($self, $http) = @_;
    $self->write_conf($http);
    my $old = $self->worker_pids;
    my $out = $self->run_nginx('-s', 'reload');
    die "reload failed: $out" if $?;
    my $deadline = time + 10;
    while (time < $deadline) {
        my %now = map { $_ => 1 } @{ $self->worker_pids };
        last unless grep { $now{$_} } @$old;
        sleep 0.05;
    }
}

# Replaces the configuration and signals a reload, without waiting for the
# old workers to leave (they may be holding requests open).  Returns 1 once
# the master has started the new workers, 0 once it has given the new
# configuration up and kept the old one (it logged [emerg], e.g. "still could
# not bind()"), or `nginx -s reload` itself refused the configuration (its
# output is in $self->{reload_output}); undef if nothing of the kind happens
# within $opt{timeout} seconds (a reload that failed silently).
sub reload_nowait {
    my ($self, $http, %opt) = @_;
    my $offset = $self->log_size;
    my %old = map { $_ => 1 } @{ $self->worker_pids };
    $self->write_conf($http);
    my $out = $self->run_nginx('-s', 'reload');
    $self->{reload_output} = $out;
    return 0 if $?;                 # refused when read: no signal sent
    my $deadline = time + ($opt{timeout} || 20);
    while (time < $deadline) {
        my $log = $self->error_log_since($offset);
        # a bind() failure is retried for about 2 s before nginx gives up
        return 0 if $log =~ /still could not bind\(\)/;
        return 0 if $log =~ /\[emerg\]/ && $log !~ /bind\(\) to/;
        my @new = grep { !$old{$_} } @{ $self->worker_pids };
        if ($log =~ /reconfiguring/ && $log =~ /start worker process/
            && @new >= $self->{workers})
        {
            # what answers next must run the new configuration: wait
            # until the old workers have been told to quit (they close
            # their listening sockets at once)
            while (time < $deadline) {
                last unless grep { kill(0, $_) && !_shutting_down($_) }
                            keys %old;
                sleep 0.02;
            }
            sleep 0.05;
            return 1;
        }
        sleep 0.05;
    }
    return undef;
}

sub _shutting_down {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/cmdline" or return 1;
    local $/;
    my $cmd = <$fh>;
    return !defined $cmd || $cmd =~ /shutting down/;
}

# The error log's size now, for error_log_since.
sub log_size {
    my ($self) = @_;
    return -s "$self->{dir}/logs/error.log" || 0;
}

sub error_log_since {
    my ($self, $offset) = @_;
    open my $fh, '<', "$self->{dir}/logs/error.log" or return '';
    seek $fh, $offset || 0, 0;
    local $/;
    my $text = <$fh>;
    return defined $text ? $text : '';
}

# The error log's lines that say a worker died of a signal (a crash).
sub crashes {
    my ($self) = @_;
    return grep { /exited on signal/ } split /\n/, $self->error_log;
}

# Opens a connection and sends a request whose header is not finished (the
# empty line is missing): nginx holds it, in the worker that accepted it,
# until finish_request.  Returns the socket.
sub hold_request {
    my ($self, $path, %headers) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                     PeerPort => $self->{port},
                                     Proto => 'tcp', Timeout => 10)
        or die "connect to nginx on $self->{port}: $!\n";
    $sock->autoflush(1);
    my $req = "GET $path HTTP/1.0\r\nHost: localhost\r\n"
        . join('', map { "$_: $headers{$_}\r\n" } sort keys %headers);
    defined syswrite($sock, $req) or die "send: $!\n";
    return $sock;
}

# Finishes a request opened by hold_request and reads the answer.  Returns
# the status code, or "EOF" (closed without an answer), "reset", "timeout".
sub finish_request {
    my ($sock, $timeout) = @_;
    $timeout ||= 10;
    local $SIG{PIPE} = 'IGNORE';
    return 'reset' unless defined syswrite($sock, "\r\n");
    my $buf = '';
    my $deadline = time + $timeout;
    while ($buf !~ /\r\n/) {
        my $left = $deadline - time;
        return 'timeout' if $left <= 0;
        my $rin = '';
        vec($rin, fileno($sock), 1) = 1;
        next unless select(my $rout = $rin, undef, undef, $left);
        my $n = sysread($sock, $buf, 4096, length $buf);
        return 'reset' unless defined $n;
        last if $n == 0;
    }
    close $sock;
    return $buf =~ m{^HTTP/1\.\d (\d{3})} ? $1 : 'EOF';
}

# Resident memory of the master and every worker (old generations too), in kB.
sub rss_kb {
    my ($self) = @_;
    my $master = $self->master_pid or return 0;
    my $sum = 0;
    for my $pid ($master, @{ $self->worker_pids }) {
        open my $fh, '<', "/proc/$pid/status" or next;
        while (<$fh>) {
            $sum += $1 if /^VmRSS:\s+(\d+)\s+kB/;
        }
    }
    return $sum;
}

sub worker_pids {
    my ($self) = @_;
    my $master = $self->master_pid or return [];
    my @pids = map { /^\s*(\d+)\s+(\d+)/ && $2 == $master ? $1 : () }
               `ps -eo pid=,ppid=`;
    return \@pids;
}

sub stop {
    my ($self) = @_;
    my $pid = $self->master_pid or return;
    return unless kill 0, $pid;
    kill 'QUIT', $pid;
    for (1 .. (valgrind() ? 2400 : 400)) {
        return unless kill 0, $pid;
        sleep 0.025;
    }
    kill 'KILL', $pid;
}

END {
    my $status = $?;
    $_->stop for @started;
    $? = $status;
}

# Runs $clients processes in parallel; each calls $code->($i) and returns a
# list of strings.  Returns every string from every process.
sub parallel {
    my ($clients, $code) = @_;
    return parallel_wait(parallel_start($clients, $code));
}

# parallel() in two halves, so that the caller can act while the clients
# run: parallel_start returns a handle at once, parallel_wait($handle)
# returns the strings once every process has finished.
sub parallel_start {
    my ($clients, $code) = @_;
    my @kids;
    for my $i (0 .. $clients - 1) {
        pipe my $r, my $w or die $!;
        my $pid = fork;
        die "fork: $!" unless defined $pid;
        if ($pid == 0) {
            close $r;
            print $w "$_\n" for $code->($i);
            close $w;
            POSIX::_exit(0);
        }
        close $w;
        push @kids, [$pid, $r];
    }
    return \@kids;
}

sub parallel_wait {
    my ($kids) = @_;
    my @out;
    for my $kid (@$kids) {
        my $fh = $kid->[1];
        while (my $line = <$fh>) {
            chomp $line;
            push @out, $line;
        }
        waitpid $kid->[0], 0;
    }
    return @out;
}

1;
