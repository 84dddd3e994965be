package RLTest::FakeRedis;

# A "shard" on a free loopback port that reads RESP commands like Redis and
# answers like a broken or hostile one.  It runs in a child process of the
# test, stops by itself after a while, and writes what it saw (connections,
# commands, replies, closes) to a log the test reads back.
#
#   RLTest::FakeRedis->start(mode => 'huge_array')
#       answers the first command of each connection with "*2147483647\r\n"
#       and nothing more
#   RLTest::FakeRedis->start(mode => 'endless_bulk', stream_for => 4)
#       answers "$999999999\r\n" and then streams bytes as fast as the peer
#       takes them, for at most stream_for seconds per connection
#   RLTest::FakeRedis->start(mode => 'slow', delay => 0.25)
#       answers every command correctly (a check allowed, no rule, OK),
#       one at a time, each taking delay seconds, like a single-threaded
#       server that became slow: it answers, only later and later
#
# Also: rcvbuf => N and mss => N, a small receive buffer and segment size,
# so a peer's writes block after a few kilobytes;
# $fake->pause / $fake->resume stop and restart reading (SIGUSR1, SIGUSR2).
# The log names each command and its first key (the 4th word of EVALSHA).

use strict;
use warnings;

use Errno qw(EAGAIN EWOULDBLOCK EINTR);
use Socket qw(SO_RCVBUF IPPROTO_TCP TCP_MAXSEG);
use File::Temp qw(tempdir);
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(time sleep);

use RLTest::Redis;

my @started;

sub start {
    my ($class, %opt) = @_;
    my $self = bless {
        mode       => $opt{mode} || 'slow',
        delay      => $opt{delay} // 0.5,
        stream_for => $opt{stream_for} // 4,
        lifetime   => $opt{lifetime} // 90,
    }, $class;
    $self->{dir} = tempdir('rltest-fake-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    $self->{log} = "$self->{dir}/events.log";

    my $server;
    for (1 .. 20) {
        $self->{port} = RLTest::Redis::free_port();
        $server = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
            LocalPort => $self->{port}, ReuseAddr => 1, Proto => 'tcp')
            or next;
        # accepted sockets inherit the listener's buffer size
        $server->sockopt(SO_RCVBUF, $opt{rcvbuf}) if $opt{rcvbuf};
        # and a small segment size, which keeps the peer's send buffer small
        setsockopt($server, IPPROTO_TCP, TCP_MAXSEG, $opt{mss}) if $opt{mss};
        last if $server->listen(64);
        undef $server;
    }
    die "fake redis: no port: $!\n" unless $server;

    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open STDOUT, '>', '/dev/null';
        open STDERR, '>', "$self->{dir}/stderr.log";
        $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP);
        $SIG{PIPE} = 'IGNORE';
        eval { $self->serve($server) };
        print STDERR $@ if $@;
        POSIX::_exit(0);
    }
    close $server;
    $self->{pid} = $pid;
    push @started, $self;
    return $self;
}

sub port { $_[0]{port} }

sub pause  { kill 'USR1', $_[0]{pid}; sleep 0.1 }
sub resume { kill 'USR2', $_[0]{pid}; sleep 0.1 }
sub pid  { $_[0]{pid} }

# [time, event, connection number, detail] for everything seen so far
sub events {
    my ($self) = @_;
    open my $fh, '<', $self->{log} or return [];
    my @ev;
    while (my $line = <$fh>) {
        chomp $line;
        push @ev, [split / /, $line, 4];
    }
    return \@ev;
}

sub count {
    my ($self, $event) = @_;
    return scalar grep { $_->[1] eq $event } @{ $self->events };
}

# the most commands one connection had sent without an answer
sub max_backlog {
    my ($self) = @_;
    my (%backlog, $max);
    $max = 0;
    for my $ev (@{ $self->events }) {
        my ($what, $id) = @$ev[1, 2];
        $backlog{$id}++ if $what eq 'cmd';
        $backlog{$id}-- if $what eq 'reply';
        $max = $backlog{$id} if $what eq 'cmd' && $backlog{$id} > $max;
    }
    return $max;
}

sub stop {
    my ($self) = @_;
    return unless $self->{pid};
    kill 'TERM', $self->{pid};
    waitpid $self->{pid}, 0;
    delete $self->{pid};
}

END {
    my $status = $?;
    $_->stop for grep { $_->{pid} } @started;
    $? = $status;
}


# the child

sub serve {
    my ($self, $server) = @_;
    open my $log, '>>', $self->{log} or die $!;
    $log->autoflush(1);
    my $say = sub { printf $log "%.3f %s\n", time, join ' ', @_ };

    $server->blocking(0);
    my $deadline = time + $self->{lifetime};
    my $paused = 0;
    local $SIG{USR1} = sub { $paused = 1 };
    local $SIG{USR2} = sub { $paused = 0 };
    my (%conn, $n);
    my $sel_r = IO::Select->new($server);

    while (time < $deadline) {
        # what is due: the next scheduled reply, the end of a stream
        my $wait = 0.2;
        my $now = time;
        my $sel_w = IO::Select->new;
        for my $c (values %conn) {
            if (@{ $c->{replies} }) {
                my $due = $c->{replies}[0][0] - $now;
                $wait = $due if $due < $wait;
            }
            $sel_w->add($c->{sock}) if length $c->{out} || $c->{streaming};
        }
        $wait = 0 if $wait < 0;

        my ($r, $w) = IO::Select->select($paused ? IO::Select->new($server)
                                                 : $sel_r,
                                         $sel_w, undef, $wait);
        $now = time;

        for my $sock (@{ $r || [] }) {
            if ($sock == $server) {
                while (my $s = $server->accept) {
                    $s->blocking(0);
                    $n++;
                    $conn{$s} = { sock => $s, id => $n, in => '', out => '',
                                  replies => [], answered => 0 };
                    $sel_r->add($s);
                    $say->('accept', $n);
                }
                next;
            }
            my $c = $conn{$sock} or next;
            my $got = sysread $sock, my $buf, 65536;
            if (!defined $got && ($! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR)) {
                next;
            }
            if (!$got) {
                $say->('close', $c->{id}, 'by peer');
                $sel_r->remove($sock);
                delete $conn{$sock};
                close $sock;
                next;
            }
            $c->{in} .= $buf;
            while (defined(my $cmd = take_command(\$c->{in}, \$c->{numkeys}))) {
                $say->('cmd', $c->{id}, $cmd);
                $self->on_command($c, $cmd, $now);
            }
        }

        for my $c (values %conn) {
            while (@{ $c->{replies} } && $c->{replies}[0][0] <= $now) {
                my $reply = shift @{ $c->{replies} };
                $c->{out} .= $reply->[1];
                $say->('reply', $c->{id});
            }
            if ($c->{streaming} && $now > $c->{stream_until}) {
                $say->('close', $c->{id}, "streamed $c->{streamed}");
                $sel_r->remove($c->{sock});
                delete $conn{ $c->{sock} };
                close $c->{sock};
                next;
            }
            if ($c->{streaming} && length $c->{out} < 65536) {
                $c->{out} .= 'x' x 65536;
            }
            next unless length $c->{out};
            my $sent = syswrite $c->{sock}, $c->{out};
            if (defined $sent) {
                $c->{streamed} += $sent if $c->{streaming};
                substr($c->{out}, 0, $sent) = '';
            } elsif ($! != EAGAIN && $! != EWOULDBLOCK && $! != EINTR) {
                $say->('close', $c->{id}, 'write failed'
                       . ($c->{streaming} ? " after $c->{streamed}" : ''));
                $sel_r->remove($c->{sock});
                delete $conn{ $c->{sock} };
                close $c->{sock};
            }
        }
    }
}

sub on_command {
    my ($self, $c, $cmd, $now) = @_;
    my $mode = $self->{mode};

    if ($mode eq 'huge_array') {
        $c->{out} .= "*2147483647\r\n" unless $c->{answered}++;

    } elsif ($mode eq 'endless_bulk') {
        return if $c->{answered}++;
        $c->{out} .= "\$999999999\r\n";
        $c->{streaming} = 1;
        $c->{streamed} = 0;
        $c->{stream_until} = $now + $self->{stream_for};

    } else {
        # a check script's answer: each check allowed (no rule read),
        # then the clock
        my $n = $c->{numkeys} || 1;
        my $reply = $cmd =~ /^EVAL/
                  ? '*' . (9 * $n + 1) . "\r\n"
                    . (":1\r\n:9\r\n:0\r\n:1000\r\n:1000\r\n"
                       . ":-1\r\n:-1\r\n:-1\r\n:-1\r\n") x $n
                    . ':' . int($now * 1000) . "\r\n"
                  : $cmd =~ /^H?GET$/ ? "\$-1\r\n"
                  : "+OK\r\n";
        my $start = $c->{busy_until} && $c->{busy_until} > $now
                  ? $c->{busy_until} : $now;
        $c->{busy_until} = $start + $self->{delay};
        push @{ $c->{replies} }, [$c->{busy_until}, $reply];
    }
}

# Removes one complete command ("*N\r\n" then N bulk strings) from the
# buffer; returns its name and first key, or undef while it is incomplete.
# The third word (an EVALSHA's number of keys) goes to $$numkeys.
sub take_command {
    my ($buf, $numkeys) = @_;
    return undef unless $$buf =~ /\A\*(\d+)\r\n/;
    my ($argc, $pos) = ($1, $+[0]);
    my ($name, $key) = ('', '');
    for my $i (1 .. $argc) {
        pos($$buf) = $pos;
        return undef unless $$buf =~ /\G\$(\d+)\r\n/gc;
        my $len = $1;
        my $start = pos($$buf);
        return undef if length($$buf) < $start + $len + 2;
        $name = uc substr($$buf, $start, $len) if $i == 1;
        $$numkeys = substr($$buf, $start, $len) if $i == 3 && $numkeys;
        $key = substr($$buf, $start, $len) if $i == 4;
        $pos = $start + $len + 2;
    }
    substr($$buf, 0, $pos) = '';
    return $name =~ /^EVAL/ ? "$name $key" : $name;
}

1;
