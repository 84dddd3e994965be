package RLTest::Redis;

# A real redis-server on a free loopback port, owned by the test that
# started it: started in a private directory, stopped by its pid.

use strict;
use warnings;

use File::Temp qw(tempdir);
use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(sleep time);

my @started;

# a test killed by a signal still runs END, which stops its servers
$SIG{$_} ||= sub { exit 1 } for qw(INT TERM HUP PIPE);

sub free_port {
    for (1 .. 50) {
        my $port = 10000 + int(rand(22000));   # below the ephemeral range
        my $sock = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                         LocalPort => $port, Proto => 'tcp',
                                         ReuseAddr => 1, Listen => 1);
        next unless $sock;
        close $sock;
        return $port;
    }
    die "no free loopback port found\n";
}

sub port_open {
    my ($port, $host) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => $host || '127.0.0.1',
                                  PeerPort => $port,
                                  Proto => 'tcp', Timeout => 1);
    return 0 unless $s;
    close $s;
    return 1;
}

# RLTest::Redis->start(port => N, args => [...], host => '127.0.0.2'): port
# defaults to a free one, host (the loopback address it binds) to 127.0.0.1.
sub start {
    my ($class, %opt) = @_;
    my $self = bless { port => $opt{port} || free_port(),
                       host => $opt{host} || '127.0.0.1',
                       args => $opt{args} || [] }, $class;
    $self->{dir} = tempdir('rltest-redis-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    $self->_spawn;
    push @started, $self;
    return $self;
}

sub _spawn {
    my ($self) = @_;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open STDOUT, '>', "$self->{dir}/redis.log";
        open STDERR, '>&', \*STDOUT;
        exec 'redis-server', '--port', $self->{port}, '--bind', $self->{host},
             '--save', '', '--appendonly', 'no', '--dir', $self->{dir},
             '--daemonize', 'no', @{ $self->{args} }
            or POSIX::_exit(127);
    }
    $self->{pid} = $pid;
    for (1 .. 200) {
        return if $self->ping;
        sleep 0.025;
    }
    die "redis-server on port $self->{port} did not start: "
        . `cat $self->{dir}/redis.log`;
}

sub port { $_[0]{port} }
sub pid  { $_[0]{pid} }

# Runs redis-cli against this server; returns its output without the newline.
sub cli {
    my ($self, @args) = @_;
    open my $fh, '-|', 'redis-cli', '-h', $self->{host}, '-p', $self->{port},
        '--no-raw', @args or die "redis-cli: $!";
    local $/;
    my $out = <$fh>;
    close $fh;
    $out = '' unless defined $out;
    $out =~ s/\n\z//;
    return $out;
}

sub ping {
    my ($self) = @_;
    return port_open($self->{port}, $self->{host}) && $self->cli('PING') eq 'PONG';
}

sub stop {
    my ($self) = @_;
    return unless $self->{pid};
    kill 'TERM', $self->{pid};
    for (1 .. 200) {
        last if waitpid($self->{pid}, WNOHANG) == $self->{pid};
        sleep 0.025;
    }
    kill 'KILL', $self->{pid} if kill 0, $self->{pid};
    waitpid($self->{pid}, 0);
    delete $self->{pid};
}

# Starts the server again on the same port (after stop), empty.
sub restart {
    my ($self) = @_;
    $self->stop;
    $self->_spawn;
}

END {
    my $status = $?;
    $_->stop for grep { $_->{pid} } @started;
    $? = $status;
}

1;
