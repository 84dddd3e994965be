package Test::Nginx::Socket;

# A small, self-contained runner for the Test::Nginx block format.
#
# It lets the project's t/*.t suites ("use Test::Nginx::Socket;") run on a
# machine without the CPAN distribution: put t/compat on Perl's path
# (PERL5LIB=t/compat) and run prove.  Without it on the path, the same suites
# run under the real Test::Nginx::Socket.  See t/compat/README.md for what is
# supported, how many assertions each block emits and what differs.

use strict;
use warnings;

use Test::Base -base;

use POSIX ();
use Time::HiRes ();
use File::Spec ();
use Cwd ();
use File::Path ();
use IO::Socket::INET ();
use IO::Select ();
use List::Util ();
use Scalar::Util ();
use Errno ();
use Time::Local ();
use HTTP::Response ();
use Test::LongString ();

our $VERSION = '0.01';

our @EXPORT = qw(
    plan run_tests run_test blocks
    repeat_each workers master_on master_off master_process_enabled
    worker_connections log_level no_shuffle no_long_string no_root_location
    env_to_nginx server_port server_port_for_client server_root html_dir
    server_name server_addr config_preamble timeout use_hup no_nginx_manager
    add_block_preprocessor add_cleanup_handler add_response_body_check
    check_accum_error_log bail_out is_str
);

#---------------------------------------------------------------------------
# settings (environment first, then the exported setters)
#---------------------------------------------------------------------------

our $Verbose            = $ENV{TEST_NGINX_VERBOSE};
our $NginxBinary        = $ENV{TEST_NGINX_BINARY} || 'nginx';
our $Workers            = 1;
our $WorkerConnections  = 64;
our $LogLevel           = $ENV{TEST_NGINX_LOG_LEVEL} || 'debug';
our $MasterProcessEnabled = $ENV{TEST_NGINX_MASTER_PROCESS} || 'off';
our $DaemonEnabled      = 'on';
our $ServerAddr         = '127.0.0.1';
our $ServerName         = 'localhost';
our $ServerPort         = $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT}
                          || 1984;
our $ServerPortForClient = $ENV{TEST_NGINX_CLIENT_PORT} || $ServerPort;
our $Timeout            = $ENV{TEST_NGINX_TIMEOUT} || 3;
our $TestNginxSleep     = $ENV{TEST_NGINX_SLEEP} || 0.015;
our $RepeatEach         = 1;
our $NoShuffle          = $ENV{TEST_NGINX_NO_SHUFFLE} || 0;
our $NoLongString;
our $NoRootLocation     = 0;
our $CheckAccumErrLog   = $ENV{TEST_NGINX_CHECK_ACCUM_ERR_LOG};
our $LoadModules        = $ENV{TEST_NGINX_LOAD_MODULES};
our $UseValgrind        = $ENV{TEST_NGINX_USE_VALGRIND};
our $NoNginxManager     = $ENV{TEST_NGINX_NO_NGINX_MANAGER} || 0;
our $ForceRestartOnTest = defined $ENV{TEST_NGINX_FORCE_RESTART_ON_TEST}
                          ? $ENV{TEST_NGINX_FORCE_RESTART_ON_TEST} : 1;
our $Randomize          = $ENV{TEST_NGINX_RANDOMIZE};
our $WorkerUser         = $ENV{TEST_NGINX_WORKER_USER};
our $EventType          = $ENV{TEST_NGINX_EVENT_TYPE};
our $PostponeOutput     = $ENV{TEST_NGINX_POSTPONE_OUTPUT};
our $ConfigPreamble     = '';

our (@EnvToNginx, @BlockPreprocessors, @CleanupHandlers, @ResponseBodyChecks);

our $NginxVersion;          # canonical form, e.g. 1.022001
our $NginxRawVersion;       # e.g. 1.22.1
our $PrevConfig;
our $ErrLogFilePos = 0;
our $NginxPid;              # daemonised nginx we started (from its pid file)
our $ChildPid;              # nginx we run in the foreground (valgrind mode)
our $ValgrindLogs;          # valgrind's --log-file pattern
our %ValgrindChecked;       # logs already checked (kept where they are)
our $InSubprocess;
our $TotalConnectingTimeouts = 0;
our $StartupErrLogOption;   # true when nginx takes "-e file" (>= 1.19.5)

if (defined $WorkerUser && $WorkerUser !~ /^\w+(?:\s+\w+)?$/) {
    die "Bad value in the env TEST_NGINX_WORKER_USER: $WorkerUser\n";
}

for my $mode (qw(USE_HUP USE_HTTP2 USE_HTTP3 USE_STAP USE_RR CHECK_LEAK
                 BENCHMARK))
{
    if ($ENV{"TEST_NGINX_$mode"}) {
        warn "WARNING: TEST_NGINX_$mode is not supported by the project's "
             . "compat runner (t/compat); ignored.\n";
    }
}

if ($Randomize) {
    my $port = pick_free_port({});
    die "Cannot find an available listening port number.\n" unless $port;
    $ServerPort = $ServerPortForClient = $port;
}

our $ServRoot;
if ($Randomize) {
    $ServRoot = File::Spec->rel2abs("t/servroot_$ServerPort");
} else {
    $ServRoot = File::Spec->rel2abs($ENV{TEST_NGINX_SERVROOT}
                                    || 't/servroot');
}
$ENV{TEST_NGINX_SERVER_ROOT} = $ServRoot;

our $LogDir     = File::Spec->catfile($ServRoot, 'logs');
our $ErrLogFile = File::Spec->catfile($LogDir, 'error.log');
our $AccLogFile = File::Spec->catfile($LogDir, 'access.log');
our $HtmlDir    = File::Spec->catfile($ServRoot, 'html');
our $ConfDir    = File::Spec->catfile($ServRoot, 'conf');
our $ConfFile   = File::Spec->catfile($ConfDir, 'nginx.conf');
our $PidFile    = File::Spec->catfile($LogDir, 'nginx.pid');
our $StderrFile = File::Spec->catfile($LogDir, 'nginx-startup.stderr');

# Sections whose meaning this runner does not implement.  A suite that uses
# one is stopped with a clear message rather than silently run differently.
our %UnsupportedSections = map { $_ => 1 } qw(
    http2 http3 curl_error curl_protocol curl_options
    stap stap_out stap_out_like stap_out_unlike
    tcp_listen tcp_reply tcp_reply_delay tcp_query tcp_query_len
    tcp_shutdown tcp_shutdown_delay tcp_no_close
    udp_listen udp_reply udp_reply_delay udp_query
    skip_openssl skip_slave reload_fails
    shutdown_error_log no_shutdown_error_log quic_max_idle_timeout
);

#---------------------------------------------------------------------------
# exported setters / getters (same names and calling forms as the real one)
#---------------------------------------------------------------------------

sub repeat_each (@) {
    $RepeatEach = shift if @_;
    return $RepeatEach;
}

sub workers (@) {
    if (@_) { $Workers = shift; return }
    return $Workers;
}

sub worker_connections (@) {
    if (@_) { $WorkerConnections = shift; return }
    return $WorkerConnections;
}

sub log_level (@) {
    if (@_) { $LogLevel = shift; return }
    return $LogLevel;
}

sub master_on ()  { $MasterProcessEnabled = 'on' }
sub master_off () { $MasterProcessEnabled = 'off' }

sub master_process_enabled (@) {
    if (@_) { $MasterProcessEnabled = shift() ? 'on' : 'off'; return }
    return $MasterProcessEnabled;
}

sub no_shuffle ()       { $NoShuffle = 1 }
sub no_long_string ()   { $NoLongString = 1 }
sub no_root_location () { $NoRootLocation = 1 }
sub check_accum_error_log () { $CheckAccumErrLog = 1 }
sub no_nginx_manager () { $NoNginxManager = 1 }

sub use_hup () {
    warn "WARNING: use_hup() is not supported by the compat runner; "
         . "nginx is restarted for every block instead.\n";
}

sub env_to_nginx (@) {
    Carp::croak("env_to_nginx: no arguments specified") unless @_;
    for my $v (@_) {
        if ($v !~ /^[A-Za-z_]/ || $v =~ /\n/) {
            Carp::croak("env_to_nginx: bad argument value: $v\n");
        }
        push @EnvToNginx, $v;
    }
}

sub server_port (@) {
    if (@_) { $ServerPort = shift; return }
    return $ServerPort;
}

sub server_port_for_client (@) {
    if (@_) { $ServerPortForClient = shift; return }
    return $ServerPortForClient;
}

sub server_name (@) {
    if (@_) { $ServerName = shift; return }
    return $ServerName;
}

sub server_addr (@) {
    if (@_) { $ServerAddr = shift; return }
    return $ServerAddr;
}

sub timeout (@) {
    if (@_) { $Timeout = shift; return }
    return $Timeout;
}

sub config_preamble ($) { $ConfigPreamble = shift }
sub server_root ()      { $ServRoot }
sub html_dir ()         { $HtmlDir }

sub add_block_preprocessor (&) { unshift @BlockPreprocessors, shift }
sub add_cleanup_handler ($)    { unshift @CleanupHandlers, shift }
sub add_response_body_check ($) { push @ResponseBodyChecks, shift }

sub is_str (@) {
    my ($got, $expected, $desc) = @_;
    if (ref $expected && ref $expected eq 'Regexp') {
        return Test::More::like($got, $expected, $desc);
    }
    if ($NoLongString) {
        return Test::More::is($got, $expected, $desc);
    }
    return Test::LongString::is_string($got, $expected, $desc);
}

sub bail_out (@) {
    cleanup();
    stop_nginx('bail_out') unless $ENV{TEST_NGINX_NO_CLEAN};
    Test::More::BAIL_OUT(join '', @_);
}

#---------------------------------------------------------------------------
# small helpers
#---------------------------------------------------------------------------

sub vwarn { warn @_ if $Verbose }

sub parse_time {
    my $t = shift;
    return undef unless defined $t;
    $t =~ s/^\s+|\s+$//g;
    if ($t =~ s/([^_a-zA-Z])ms$/$1/) {
        return $t / 1000;
    }
    $t =~ s/([^_a-zA-Z])s$/$1/;
    return $t;
}

sub slurp {
    my $file = shift;
    open my $in, '<', $file or return '';
    binmode $in;
    local $/;
    my $data = <$in>;
    close $in;
    return defined $data ? $data : '';
}

sub fmt_str {
    my $s = shift;
    chomp $s;
    $s =~ s/"/\\"/g;
    $s =~ s/\r/\\r/g;
    $s =~ s/\n/\\n/g;
    return $s;
}

sub trim_summary {
    my $s = shift;
    return '' unless defined $s;
    $s =~ s/^\s+|\s+$//g;
    $s =~ s/\n/ /g;
    $s =~ s/\s{2,}/ /g;
    return $s;
}

sub canon_version { sprintf "%d.%03d%03d", @_[0 .. 2] }

sub find_executable {
    my $cmd = shift;
    if ($cmd =~ m{/}) {
        return (-f $cmd && -x _) ? $cmd : undef;
    }
    for my $dir (split /:/, ($ENV{PATH} || '')) {
        next if $dir eq '';
        my $path = File::Spec->catfile($dir, $cmd);
        return $path if -f $path && -x _;
    }
    return undef;
}

sub resolve_nginx_binary {
    my $path = find_executable($NginxBinary);
    if (!$path && !$ENV{TEST_NGINX_BINARY} && -x '/usr/sbin/nginx') {
        $path = '/usr/sbin/nginx';
    }
    if (!$path) {
        bail_out("Cannot find the nginx executable \"$NginxBinary\" "
                 . "(set TEST_NGINX_BINARY or PATH)");
    }
    return $path;
}

sub get_nginx_version {
    $NginxBinary = resolve_nginx_binary();
    my $out = '';
    my $pid = open my $fh, '-|';
    bail_out("fork() failed: $!") unless defined $pid;
    if ($pid == 0) {
        $InSubprocess = 1;
        open STDERR, '>&', \*STDOUT;
        { exec { $NginxBinary } $NginxBinary, '-V'; }
        POSIX::_exit(127);
    }
    { local $/; $out = <$fh>; }
    close $fh;
    $out = '' unless defined $out;
    if ($? != 0) {
        bail_out("Failed to get the version of nginx ($NginxBinary -V): $out");
    }
    if ($out =~ m{(?:nginx|openresty)[^/]*/(\d+)\.(\d+)\.(\d+)}s
        || $out =~ m{\w+/(\d+)\.(\d+)\.(\d+)}s)
    {
        $NginxRawVersion = "$1.$2.$3";
        my $v = canon_version($1, $2, $3);
        $StartupErrLogOption = ($v >= 1.019005);
        return $v;
    }
    bail_out("Failed to parse the output of \"nginx -V\": $out");
}

sub pick_free_port {
    my $used = shift;
    for (1 .. 1000) {
        my $port = int(rand 63550) + 1985;
        next if $used->{$port};
        my $sock = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                         LocalPort => $port,
                                         Proto     => 'tcp');
        if ($sock) {
            close $sock;
            return $port;
        }
    }
    return undef;
}

sub expand_env_in_text {
    my ($text, $name, $rand_ports) = @_;
    return undef unless defined $text;
    my %used = ($ServerPort => 1, map { $_ => 1 } values %$rand_ports);
    $text =~ s{\$(TEST_NGINX_[_A-Z0-9]+)}{
        my $var = $1;
        my $value;
        if ($var =~ /^TEST_NGINX_RAND_PORT_[0-9]+$/) {
            if (!defined $rand_ports->{$var}) {
                my $port = pick_free_port(\%used);
                bail_out("$name - Cannot find an available listening port "
                         . "number for $var.\n") unless $port;
                $rand_ports->{$var} = $port;
                $used{$port} = 1;
            }
            $value = $rand_ports->{$var};
        } else {
            if (!defined $ENV{$var}) {
                bail_out("$name - No environment $var defined.\n");
            }
            $value = $ENV{$var};
        }
        $value;
    }ge;
    return $text;
}

#---------------------------------------------------------------------------
# process management: only processes we started, addressed by pid
#---------------------------------------------------------------------------

sub is_running {
    my $pid = shift;
    return 0 unless defined $pid && $pid =~ /^\d+$/ && $pid > 1;
    return 0 unless kill 0, $pid;
    if (open my $st, '<', "/proc/$pid/stat") {
        my $line = <$st>;
        close $st;
        # a zombie (nobody reaped it yet) has exited already
        return 0 if defined $line && $line =~ /\)\s+([ZX])\s/;
    }
    return 1;
}

# Is $pid an nginx that was started on this server root?  Guards against a
# stale pid file naming some unrelated process that got the pid later.
sub is_our_nginx {
    my $pid = shift;
    return 0 unless is_running($pid);
    return 1 unless -d "/proc/$pid";     # no procfs: trust the pid file
    my $cmdline = slurp("/proc/$pid/cmdline");
    $cmdline =~ s/\0/ /g;
    return index($cmdline, $ServRoot) >= 0 ? 1 : 0;
}

sub read_pidfile {
    my $pid = slurp($PidFile);
    $pid =~ s/\s+//g;
    return $pid =~ /^\d+$/ ? $pid : undef;
}

sub wait_gone {
    my ($pid, $is_child, $secs) = @_;
    my $deadline = Time::HiRes::time() + $secs;
    while (1) {
        waitpid($pid, POSIX::WNOHANG()) if $is_child;
        return 1 unless is_running($pid);
        return 0 if Time::HiRes::time() > $deadline;
        Time::HiRes::sleep(0.02);
    }
}

sub stop_process {
    my ($pid, $is_child, $what) = @_;
    return unless is_running($pid);
    my $grace = $Timeout;
    $grace = 30 if $UseValgrind && $grace < 30;
    vwarn("$what - sending QUIT to nginx $pid\n");
    kill 'QUIT', $pid;
    return if wait_gone($pid, $is_child, $grace);
    warn "$what - timeout when waiting for the nginx process $pid to exit; "
         . "sending TERM\n";
    kill 'TERM', $pid;
    return if wait_gone($pid, $is_child, 2);
    warn "$what - killing the nginx process $pid with force\n";
    kill 'KILL', $pid;
    wait_gone($pid, $is_child, 2);
}

sub stop_nginx {
    my $what = shift || 'cleanup';
    if (defined $ChildPid) {
        stop_process($ChildPid, 1, $what);
        waitpid($ChildPid, POSIX::WNOHANG());
        undef $ChildPid;
    }
    if (defined $NginxPid) {
        stop_process($NginxPid, 0, $what) if is_our_nginx($NginxPid);
        undef $NginxPid;
    }
    if (-f $PidFile) {
        my $pid = read_pidfile();
        if (defined $pid && is_running($pid)) {
            if (is_our_nginx($pid)) {
                stop_process($pid, 0, $what);
            } else {
                warn "WARNING: $PidFile names process $pid, which is not an "
                     . "nginx of $ServRoot; leaving it alone.\n";
            }
        }
        unlink $PidFile if -f $PidFile && !is_running(read_pidfile());
    }
}

sub cleanup {
    for my $hdl (@CleanupHandlers) {
        $hdl->();
    }
}

sub nginx_is_up {
    return is_running($ChildPid) if defined $ChildPid;
    return defined $NginxPid && is_running($NginxPid);
}

# Is something listening on TCP $port?  Reads /proc/net/tcp{,6} so that no
# probe connection shows up in nginx's error log.  undef: cannot tell.
sub port_listening {
    my $port = shift;
    my $hex = sprintf ':%04X', $port;
    my $readable = 0;
    for my $f ('/proc/net/tcp', '/proc/net/tcp6') {
        open my $in, '<', $f or next;
        $readable = 1;
        while (<$in>) {
            my @f = split ' ';
            next unless @f > 3;
            return 1 if $f[3] eq '0A' && substr($f[1], -5) eq $hex;
        }
        close $in;
    }
    return $readable ? 0 : undef;
}

sub spawn_nginx {
    my $cmd = shift;
    unlink $StderrFile;
    my $pid = fork();
    bail_out("fork() failed: $!") unless defined $pid;
    if ($pid == 0) {
        $InSubprocess = 1;
        setpgrp(0, 0);
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', '/dev/null';
        open STDERR, '>', $StderrFile or open STDERR, '>', '/dev/null';
        { exec { $cmd->[0] } @$cmd; }
        print STDERR "exec $cmd->[0] failed: $!\n";
        POSIX::_exit(127);
    }
    return $pid;
}

sub nginx_command {
    my $valgrind = shift;
    my @cmd = ($NginxBinary, '-p', "$ServRoot/");
    # Debian-style builds log startup errors to stderr (or /var/log) rather
    # than to <prefix>/logs/error.log as a source build does; "-e" puts
    # them where the error_log checks of must_die blocks look.
    push @cmd, '-e', $ErrLogFile if $StartupErrLogOption;
    push @cmd, '-c', $ConfFile;
    if ($valgrind) {
        my @opts = $valgrind =~ /^\d+$/
            ? qw(--tool=memcheck --leak-check=full --keep-debuginfo=yes
                 --show-possibly-lost=no)
            : split(' ', $valgrind);
        my @supp = -f 'valgrind.suppress'
            ? ('--suppressions=valgrind.suppress') : ();
        push @supp, '--suppressions=' . write_core_suppressions();
        # options that name a log file keep it (as with the real runner,
        # which passes a non-numeric TEST_NGINX_USE_VALGRIND as it is):
        # a caller collecting the logs of several suites needs them
        # outside the server root, which the next suite wipes
        my ($own) = grep { /^--log-file=/ } @opts;
        $ValgrindLogs = $own ? substr($own, length '--log-file=')
                             : "$LogDir/valgrind.%p.log";
        unshift @cmd, 'valgrind', '--num-callers=100', '-q',
            '--gen-suppressions=all', @supp, @opts,
            $own ? () : ("--log-file=$ValgrindLogs");
    }
    return \@cmd;
}

# nginx itself does not free a few process-lifetime allocations when a
# single (master_process off) nginx exits: the copied environment and the
# event module's connection arrays.  They are not the module's leaks, so
# they are suppressed; "obj:<nginx binary>" stands for the static function
# of a stripped binary (ngx_event_process_init), never for a dynamic module.
sub write_core_suppressions {
    my $file = File::Spec->catfile($ConfDir, 'compat-valgrind.supp');
    my $bin = Cwd::abs_path($NginxBinary) || $NginxBinary;
    my $supp = '';
    my @stacks = (
        ['nginx-environment',       'fun:ngx_set_environment'],
        ['nginx-event-process',     'fun:ngx_event_process_init'],
        ['nginx-event-process-obj', "obj:$bin",
                                    'fun:ngx_single_process_cycle'],
    );
    for my $s (@stacks) {
        my ($id, @frames) = @$s;
        $supp .= "{\n   compat-$id\n   Memcheck:Leak\n"
               . "   match-leak-kinds: definite\n"
               . "   fun:malloc\n   fun:ngx_alloc\n"
               . join('', map { "   $_\n" } @frames) . "}\n";
    }
    open my $out, '>', $file or bail_out("Can't write $file: $!");
    print $out $supp;
    close $out;
    return $file;
}

# Runs nginx once in daemon mode and waits for the launching process.
# Returns ($status, $stderr); $status is the wait status, -1 if exec failed.
sub run_nginx_once {
    my $name = shift;
    my $cmd = nginx_command(undef);
    vwarn("$name - running @$cmd\n");
    my $pid = spawn_nginx($cmd);
    my $deadline = Time::HiRes::time() + 10 + $Timeout;
    while (1) {
        my $r = waitpid($pid, POSIX::WNOHANG());
        if ($r == $pid) {
            my $status = $?;
            my $err = slurp($StderrFile);
            $status = -1 if ($status >> 8) == 127 && $err =~ /^exec .* failed/;
            return ($status, $err);
        }
        # still in the foreground ("daemon off;" in main_config?)
        my $pidfile_pid = -f $PidFile ? read_pidfile() : undef;
        if (defined $pidfile_pid && $pidfile_pid == $pid
            && port_listening($ServerPort))
        {
            $ChildPid = $pid;
            return (0, slurp($StderrFile));
        }
        if (Time::HiRes::time() > $deadline) {
            if (port_listening($ServerPort)) {
                $ChildPid = $pid;
                return (0, slurp($StderrFile));
            }
            stop_process($pid, 1, $name);
            return (-2, slurp($StderrFile));
        }
        Time::HiRes::sleep(0.005);
    }
}

sub wait_for_pidfile {
    my $secs = shift;
    my $deadline = Time::HiRes::time() + $secs;
    while (Time::HiRes::time() < $deadline) {
        my $pid = -f $PidFile ? read_pidfile() : undef;
        return $pid if defined $pid;
        Time::HiRes::sleep(0.005);
    }
    return undef;
}

sub wait_for_port {
    my ($secs, $child) = @_;
    my $deadline = Time::HiRes::time() + $secs;
    while (1) {
        my $up = port_listening($ServerPort);
        return 1 if !defined $up || $up;
        return 0 if defined $child && !is_running($child);
        return 0 if Time::HiRes::time() > $deadline;
        Time::HiRes::sleep(0.01);
    }
}

sub start_nginx {
    my $name = shift;

    if ($UseValgrind) {
        my $cmd = nginx_command($UseValgrind);
        warn "$name\n";
        vwarn("$name - running @$cmd\n");
        $ChildPid = spawn_nginx($cmd);
        if (!wait_for_port(60, $ChildPid)) {
            my $err = slurp($StderrFile);
            waitpid($ChildPid, POSIX::WNOHANG());
            stop_nginx($name);
            bail_out("$name - nginx under valgrind did not start listening "
                     . "on port $ServerPort: $err");
        }
        return;
    }

    my ($status, $err) = run_nginx_once($name);
    if ($status != 0) {
        my $cmd = join ' ', @{ nginx_command(undef) };
        my $why = $err;
        if ($why !~ /\S/ && $StartupErrLogOption) {
            $why = join '', grep { /\[(?:emerg|alert|crit)\]/ }
                            split /^/m, slurp($ErrLogFile);
        }
        $why =~ s/\s*\n\s*/ | /g;
        $why =~ s/^[\s|]+|[\s|]+$//g;
        bail_out("$name - Cannot start nginx using command \"$cmd\" "
                 . "(status code $status): $why");
    }
    return if defined $ChildPid;         # stayed in the foreground
    $NginxPid = wait_for_pidfile(5);
    if (!defined $NginxPid) {
        bail_out("$name - nginx started but wrote no pid file $PidFile");
    }
    wait_for_port(5, $NginxPid);
}

#---------------------------------------------------------------------------
# server root and nginx.conf
#---------------------------------------------------------------------------

sub setup_server_root {
    if (-d $ServRoot) {
        # Remove only what this runner creates, then insist that the
        # directory is empty, so a mistaken TEST_NGINX_SERVROOT never wipes
        # somebody's data.
        File::Path::remove_tree($ConfDir, $HtmlDir, $LogDir,
                                glob("$ServRoot/*_cache"),
                                glob("$ServRoot/*_temp"));
        rmdir $ServRoot
            or bail_out("Can't remove $ServRoot (not empty?): $!");
    }
    for my $dir ($ServRoot, $LogDir, $HtmlDir, $ConfDir) {
        mkdir $dir or bail_out("Failed to do mkdir $dir: $!");
    }
    my $index = "$HtmlDir/index.html";
    open my $out, '>', $index or bail_out("Can't open $index: $!");
    print $out '<html><head><title>It works!</title></head>'
               . '<body>It works!</body></html>';
    close $out;
}

sub write_user_files {
    my ($block, $rand_ports) = @_;
    my $name = $block->name;
    my $files = scalar($block->user_files);
    return unless $files;

    if (!ref $files) {
        my @list;
        my ($fname, $body, $date);
        for my $line (split /^/m, $files) {
            if ($line =~ /^>>> (\S+)(?:\s+(.+))?/) {
                push @list, [$fname, $body, $date] if defined $fname;
                ($fname, $date, $body) = ($1, $2, undef);
            } else {
                $body .= $line;
            }
        }
        push @list, [$fname, $body, $date] if defined $fname;
        $files = \@list;
    } elsif (ref $files ne 'ARRAY') {
        bail_out("$name - wrong value type: " . ref($files)
                 . ", only scalar or ARRAY are accepted");
    }

    for my $file (@$files) {
        my ($fname, $body, $date) = @$file;
        $body = '' unless defined $body;
        my $path = $fname =~ m{^/} ? $fname : "$HtmlDir/$fname";
        if ($path =~ m{(.*)/}) {
            my $dir = $1;
            File::Path::make_path($dir) unless -d $dir;
        }
        $body = expand_env_in_text($body, $name, $rand_ports);
        open my $out, '>', $path
            or bail_out("$name - Cannot open $path for writing: $!\n");
        binmode $out;
        print $out $body;
        close $out;
        if ($date) {
            # touch -t format: [[CC]YY]MMDDhhmm[.ss], taken as GMT
            if ($date =~ /^(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(?:\.(\d\d))?$/) {
                my $t = Time::Local::timegm($6 || 0, $5, $4, $3, $2 - 1, $1);
                utime $t, $t, $path;
            } else {
                bail_out("$name - unsupported user_files date \"$date\"");
            }
        }
    }
}

sub write_config_file {
    my ($block, $config, $rand_ports) = @_;
    my $name = $block->name;

    my $http_config = expand_env_in_text(scalar($block->http_config), $name,
                                         $rand_ports);
    my $main_config = expand_env_in_text(scalar($block->main_config), $name,
                                         $rand_ports);
    my $post_main_config = expand_env_in_text(scalar($block->post_main_config),
                                              $name, $rand_ports);
    $config           = '' unless defined $config;
    $http_config      = '' unless defined $http_config;
    $main_config      = '' unless defined $main_config;
    $post_main_config = '' unless defined $post_main_config;

    my $err_log_file = scalar($block->error_log_file) || $ErrLogFile;
    my $server_name = defined scalar($block->server_name)
                      ? scalar($block->server_name) : $ServerName;
    $server_name =~ s/\\/\\\\/g;
    $server_name =~ s/'/\\'/g;

    my $master = $MasterProcessEnabled;
    my $daemon = $DaemonEnabled;
    if ($UseValgrind) {
        $master = 'off';
        $daemon = 'off';
    }

    my $extra_http = '';
    if (defined $PostponeOutput && $http_config !~ /\bpostpone_output\b/) {
        bail_out("Bad TEST_NGINX_POSTPONE_OUTPUT value: $PostponeOutput\n")
            unless $PostponeOutput =~ /^\d+$/;
        $extra_http = "    postpone_output $PostponeOutput;\n";
    }

    my $conf = '';
    if ($LoadModules) {
        for my $so (grep { length } split /\s+/, $LoadModules) {
            $conf .= "load_module $so;\n";
        }
    }

    $conf .= "worker_processes  $Workers;\n"
           . "daemon $daemon;\n"
           . "master_process $master;\n"
           . "error_log $err_log_file $LogLevel;\n"
           . "pid       $PidFile;\n"
           . "env LD_PRELOAD;\n"
           . "env LD_LIBRARY_PATH;\n"
           . "env ASAN_OPTIONS;\n";
    for my $v (@EnvToNginx) {
        $conf .= $v =~ /\s/ ? "env '$v';\n" : "env $v;\n";
    }

    $conf .= "\n$main_config\n\n"
           . "http {\n"
           . "    access_log $AccLogFile;\n\n"
           . "    default_type text/plain;\n"
           . "    keepalive_timeout  68;\n"
           . $extra_http
           . "\n$http_config\n\n"
           . "    server {\n"
           . "        listen          $ServerPort;\n"
           . "        server_name     '$server_name';\n\n"
           . "        client_max_body_size 30M;\n\n"
           . "        # Begin preamble config...\n"
           . "$ConfigPreamble\n"
           . "        # End preamble config...\n\n"
           . "        # Begin test case config...\n"
           . "$config\n"
           . "        # End test case config.\n\n";
    if (!$NoRootLocation) {
        $conf .= "        location / {\n"
               . "            root $HtmlDir;\n"
               . "            index index.html index.htm;\n"
               . "        }\n";
    }
    $conf .= "    }\n"
           . "}\n\n"
           . "$post_main_config\n\n"
           . "events {\n"
           . "    accept_mutex off;\n\n"
           . "    worker_connections  $WorkerConnections;\n";
    $conf .= "    use $EventType;\n" if $EventType;
    $conf .= "}\n";

    # Workers must be able to write the server root that root created.
    if (defined $WorkerUser) {
        $conf .= "user $WorkerUser;\n";
    } elsif ($> == 0) {
        $conf .= "user root;\n";
    }

    open my $out, '>', $ConfFile
        or bail_out("Can't open $ConfFile for writing: $!\n");
    print $out $conf;
    close $out;
}

#---------------------------------------------------------------------------
# the driver
#---------------------------------------------------------------------------

sub run_tests () {
    $NginxVersion = get_nginx_version();

    if (!defined $ENV{TEST_NGINX_SERVER_PORT}) {
        $ENV{TEST_NGINX_SERVER_PORT} = $ServerPort;
    }

    my @blocks = Test::Base::blocks();
    @blocks = List::Util::shuffle(@blocks) unless $NoShuffle;

    for my $block (@blocks) {
        for my $hdl (@BlockPreprocessors) {
            $hdl->($block);
        }
        $block->set_value('name', "$0 " . $block->name);
        run_test($block);
    }

    cleanup();
    stop_nginx('run_tests') unless $ENV{TEST_NGINX_NO_CLEAN};
}

sub check_block_sections {
    my $block = shift;
    my $name = $block->name;
    for my $sec (keys %$block) {
        next if $sec =~ /^_/;
        if ($UnsupportedSections{$sec}) {
            bail_out("$name - the --- $sec section is not supported by the "
                     . "project's compat runner (t/compat/README.md)");
        }
    }
}

sub skip_spec {
    my $block = shift;
    my $name = $block->name;

    if (defined(my $spec = scalar($block->skip_eval))) {
        if ($spec =~ /^\s*(\d+)\s*:\s*(.*)/s) {
            my ($n, $code) = ($1, $2);
            my $skip = eval $code;
            bail_out("$name - skip_eval - failed to eval the Perl code "
                     . "\"$code\": $@") if $@;
            return ($skip, $n, 'skip_eval');
        }
        return (0);
    }

    if (defined(my $spec = scalar($block->skip_nginx))) {
        if ($spec =~ /^\s*(\d+)\s*:\s*([<>]=?)\s*(\d+)\.(\d+)\.(\d+)
                      (?:\s*:\s*(.*))?\s*$/x)
        {
            my ($n, $op, $reason) = ($1, $2, $6);
            my $ver = canon_version($3, $4, $5);
            $reason ||= "nginx version $op $3.$4.$5";
            my $skip = eval "$NginxVersion $op $ver";
            return ($skip, $n, $reason);
        }
        bail_out("$name - Invalid --- skip_nginx spec: $spec");
    }

    if (defined(my $spec = scalar($block->skip_nginx2))) {
        if ($spec =~ /^\s*(\d+)\s*:\s*([<>]=?)\s*(\d+)\.(\d+)\.(\d+)
                      \s*(or|and)\s*([<>]=?)\s*(\d+)\.(\d+)\.(\d+)
                      (?:\s*:\s*(.*))?\s*$/x)
        {
            my ($n, $opa, $opx, $opb, $reason) = ($1, $2, $6, $7, $11);
            my $va = canon_version($3, $4, $5);
            my $vb = canon_version($8, $9, $10);
            my $a = eval "$NginxVersion $opa $va";
            my $b = eval "$NginxVersion $opb $vb";
            my $skip = $opx eq 'or' ? ($a || $b) : ($a && $b);
            return ($skip, $n, $reason || 'various reasons');
        }
        bail_out("$name - Invalid --- skip_nginx2 spec: $spec");
    }

    return (0);
}

sub run_test ($) {
    my $block = shift;
    return if defined scalar($block->SKIP);

    my $name = $block->name;
    check_block_sections($block);

    my $rand_ports = {};
    my $config = expand_env_in_text(scalar($block->config), $name, $rand_ports);

    local $LogLevel = $LogLevel;
    $LogLevel = scalar($block->log_level) if scalar($block->log_level);

    my $must_die = scalar($block->must_die);
    local $UseValgrind = $UseValgrind;
    undef $UseValgrind if defined $must_die;

    my ($should_skip, $tests_to_skip, $skip_reason) = skip_spec($block);
    $skip_reason = 'various reasons' unless defined $skip_reason;

    my ($should_todo, $todo_reason);
    if (defined(my $todo = scalar($block->todo))) {
        if ($todo =~ /^\s*(\d+)\s*:\s*(.*)/s) {
            ($should_todo, $tests_to_skip, $todo_reason) = (1, $1, $2);
        } else {
            bail_out("$name - Invalid --- todo spec: $todo");
        }
    }

    my $should_restart = 1;
    my $restart_previous;
    if (!defined $config) {
        if (!$NoNginxManager && !defined $PrevConfig) {
            bail_out("$name - No '--- config' section specified and could "
                     . "not get previous one. Use TEST_NGINX_NO_NGINX_MANAGER ?");
        }
        # Reuse the running nginx of the previous block; if there is none
        # (valgrind mode stops it after each block) start it again on the
        # previous block's server root and nginx.conf.
        $should_restart = 0;
        $restart_previous = !$NoNginxManager && !nginx_is_up();
    } elsif ($NoNginxManager) {
        Test::More::diag("NO_NGINX_MANAGER activated: config for $name "
                         . "ignored");
        $should_restart = 0;
    } elsif (!$ForceRestartOnTest && defined $PrevConfig
             && $config eq $PrevConfig && nginx_is_up())
    {
        $should_restart = 0;
    }

    if (!$NoNginxManager && !$should_skip) {
        if ($should_restart) {
            $PrevConfig = $config;
            stop_nginx($name);
            setup_server_root();
            write_user_files($block, $rand_ports);
            write_config_file($block, $config, $rand_ports);

            if (defined $must_die) {
                run_must_die($block, $must_die);
                return;
            }

            start_nginx($name);
            Time::HiRes::sleep($TestNginxSleep);

        } else {
            # Same nginx as the previous block: start this block's error
            # log checks from an empty file.
            truncate_file($ErrLogFile);
            write_user_files($block, $rand_ports);
            if ($restart_previous) {
                stop_nginx($name);
                start_nginx($name);
                Time::HiRes::sleep($TestNginxSleep);
            }
        }
    }

    if (my $init = scalar($block->init)) {
        eval $init;
        bail_out("$name - init failed: $@") if $@;
    }

    my $i = 0;
    $ErrLogFilePos = 0;
    while ($i++ < $RepeatEach) {
        write_user_files($block, $rand_ports) if $i > 1;

        if ($should_skip && defined $tests_to_skip) {
            SKIP: {
                Test::More::skip("$name - $skip_reason", $tests_to_skip);
            }
        } elsif ($should_todo) {
            TODO: {
                Test::More::todo_skip("$name - $todo_reason", $tests_to_skip);
            }
        } elsif (!$should_skip) {
            run_test_helper($block, $i - 1);
        }
    }

    if (my $total = $ENV{TEST_NGINX_ERROR_LOG}) {
        if (-s $ErrLogFile) {
            if (open my $out, '>>', $total) {
                print $out "\n=== $0 $name\n", slurp($ErrLogFile);
                close $out;
            }
        }
    }

    if ($UseValgrind && !$should_skip) {
        stop_nginx($name);
        check_valgrind_logs($name);
    }
}

sub truncate_file {
    my $file = shift;
    return unless -e $file;
    open my $fh, '>', $file or return;   # nginx appends (O_APPEND)
    close $fh;
}

sub run_must_die {
    my ($block, $must_die) = @_;
    my $name = $block->name;

    my $i = 0;
    $ErrLogFilePos = 0;
    while (1) {
        my ($status, $stderr) = run_nginx_once($name);
        vwarn("$name - nginx stderr: $stderr") if length $stderr;

        my $exit_code = $status > 0 ? ($status >> 8) : $status;
        my $coredump  = $status > 0 ? ($status & 128) : 0;

        if ($status == -1) {
            Test::More::fail("$name - failed to execute the nginx command line");
        } elsif ($coredump) {
            Test::More::fail("$name - nginx core dumped");
        } elsif (Scalar::Util::looks_like_number($must_die)) {
            Test::More::is($must_die, $exit_code,
                           "$name - die with the expected exit code");
        } else {
            Test::More::isnt($status, 0, "$name - die as expected");
        }

        # Startup errors went to logs/error.log through "-e"; an nginx too
        # old for "-e" printed them on stderr only, so check those lines too.
        my @extra = $StartupErrLogOption ? () : split /^/m, $stderr;
        check_error_log($block, undef, $i, 0, \@extra);

        if ($status == 0) {
            warn "WARNING: $name - nginx must die but it does not; "
                 . "killing it (req $i)\n";
            $NginxPid = wait_for_pidfile(2) unless defined $ChildPid;
            stop_nginx($name);
        }

        last unless ++$i < $RepeatEach;
    }
}

#---------------------------------------------------------------------------
# requests
#---------------------------------------------------------------------------

sub parse_more_headers {
    my $in = shift;
    my $out = '';
    my $is_chunked;
    for my $header (split /\n+/, $in) {
        next if $header =~ /^\s*#/;
        my ($key, $val) = split /:\s*/, $header, 2;
        $val = '' unless defined $val;
        $is_chunked = 1 if lc($key) eq 'transfer-encoding' && $val eq 'chunked';
        $out .= "$key: $val\r\n";
    }
    return ($out, $is_chunked);
}

# Turns "METHOD [URI [VERSION]]\n[body]" (possibly split in packets) into a
# wire request: "\r\n" line ends, Host and Connection headers, the block's
# more_headers and a Content-Length for a (trimmed) body.  Returns the list
# of packets, split at the places the caller split them.
sub build_request {
    my ($name, $more_headers, $is_chunked, $conn, $packets) = @_;

    my $whole = join '', map { defined $_ ? $_ : '' } @$packets;
    my ($first, $rest) = $whole =~ /\A([^\n]*\n?)(.*)\z/s;
    if (!defined $first || $first eq '') {
        bail_out("$name - Request line should be non-empty");
    }

    my ($lead, $meth, $uri, $ver);
    if ($first =~ /^(\s*)(\S+) *(?:(\S+) *)?(?:(\S+) *)?\s*$/) {
        ($lead, $meth, $uri, $ver) = ($1, $2, $3, $4);
    } else {
        bail_out("$name - Request line is not valid. Should be "
                 . "'meth [url [version]]' but got \"$first\".");
    }
    $uri = '/' unless defined $uri;
    $ver = 'HTTP/1.1' unless defined $ver;

    my $body = $rest;
    my $body_lead = 0;
    my $len_header = '';
    if (!$is_chunked && $body ne ''
        && $more_headers !~ /(?:^|\n)Content-Length:/)
    {
        (my $t = $body) =~ s/^\s+//;
        $body_lead = length($body) - length($t);
        $t =~ s/\s+$//;
        $body = $t;
        $len_header = 'Content-Length: ' . length($body) . "\r\n";
    }

    $more_headers =~ s/(?<!\r)\n/\r\n/g;
    my $headers = '';
    $headers .= "Host: $ServerName\r\n"
        if $more_headers !~ /(?:^|\n)Host:/i;
    $headers .= "Connection: $conn\r\n"
        if $more_headers !~ /(?:^|\n)Connection/i;
    $headers .= "$more_headers$len_header\r\n";

    my $line = "$meth $uri $ver";
    my $head = "$line\r\n$headers";
    my $req = $head . $body;

    return [$req] if @$packets <= 1;

    # map the caller's packet boundaries onto the rewritten request
    my @cuts;
    my $off = 0;
    (my $written = $first) =~ s/^\s+|\s+$//g;
    for my $k (0 .. $#$packets - 1) {
        $off += length(defined $packets->[$k] ? $packets->[$k] : '');
        my $pos;
        if ($off < length $first) {
            my $in_line = $off - length $lead;
            $in_line = 0 if $in_line < 0;
            $pos = $in_line < length $written ? $in_line : length $head;
        } else {
            my $in_body = $off - length($first) - $body_lead;
            $in_body = 0 if $in_body < 0;
            $in_body = length $body if $in_body > length $body;
            $pos = length($head) + $in_body;
        }
        push @cuts, $pos;
    }
    my @out;
    my $prev = 0;
    for my $cut (@cuts, length $req) {
        $cut = $prev if $cut < $prev;
        push @out, substr($req, $prev, $cut - $prev);
        $prev = $cut;
    }
    return \@out;
}

sub headers_for {
    my ($name, $more_headers, $idx) = @_;
    if (ref $more_headers eq 'ARRAY') {
        my $h = $more_headers->[$idx];
        bail_out("$name - --- more_headers lacks data for the request "
                 . "number $idx") unless defined $h;
        return parse_more_headers($h);
    }
    return parse_more_headers($more_headers);
}

# Returns a list of requests; each request is a list of packets
# ({value => ..., delay_before => ...}) sent over one connection.
sub get_req_from_block {
    my $block = shift;
    my $name = $block->name;

    if (defined(my $raw = scalar($block->raw_request))) {
        if (ref $raw eq 'ARRAY') {
            return [[map { +{ value => $_ } } @$raw]];
        }
        return [[{ value => $raw }]];
    }

    my $request;
    if (defined scalar($block->request_eval)) {
        Test::More::diag("$name - request_eval DEPRECATED. Use request eval "
                         . "instead.");
        $request = eval scalar($block->request_eval);
        warn $@ if $@;
    } else {
        $request = scalar($block->request);
        if (defined $request && !ref $request) {
            1 while $request =~ s/^\s*\#[^\n]+\s+|^\s+//gs;
        }
    }

    my $more_headers = scalar($block->more_headers);
    $more_headers = '' unless defined $more_headers;

    if (my $reqs = scalar($block->pipelined_requests)) {
        if (ref $reqs ne 'ARRAY') {
            bail_out("$name - invalid entries in --- pipelined_requests");
        }
        my $all = '';
        for my $i (0 .. $#$reqs) {
            my $conn = $i == $#$reqs ? 'close' : 'keep-alive';
            my ($hdr, $chunked) = headers_for($name, $more_headers, $i);
            $all .= build_request($name, $hdr, $chunked, $conn,
                                  [$reqs->[$i]])->[0];
        }
        return [[{ value => $all }]];
    }

    if (!defined $request) {
        bail_out("$name - no --- request, --- raw_request or "
                 . "--- pipelined_requests section");
    }

    if (!ref $request) {
        my ($hdr, $chunked) = headers_for($name, $more_headers, 0);
        my $r = build_request($name, $hdr, $chunked, 'close', [$request]);
        return [[{ value => $r->[0] }]];
    }

    if (ref $request ne 'ARRAY') {
        bail_out("$name - invalid ---request : MUST be string or array of "
                 . "requests");
    }

    my @list;
    my $i = 0;
    for my $one (@$request) {
        my ($hdr, $chunked) = headers_for($name, $more_headers, $i);
        if (!ref $one) {
            my $r = build_request($name, $hdr, $chunked, 'close', [$one]);
            push @list, [{ value => $r->[0] }];
        } elsif (ref $one eq 'ARRAY') {
            my @raw;
            for my $p (@$one) {
                if (!ref $p) {
                    push @raw, $p;
                } elsif (ref $p eq 'HASH') {
                    push @raw, $p->{value};
                } else {
                    bail_out("$name - Invalid syntax. $p should be a string "
                             . "or hash with value.");
                }
            }
            my $out = build_request($name, $hdr, $chunked, 'close', \@raw);
            my @packets;
            for my $k (0 .. $#$out) {
                my %p = ref $one->[$k] eq 'HASH' ? %{ $one->[$k] } : ();
                $p{value} = $out->[$k];
                push @packets, \%p;
            }
            push @list, \@packets;
        } else {
            bail_out("$name - Invalid syntax. $one should be a string or an "
                     . "array of packets.");
        }
        $i++;
    }
    return \@list;
}

sub send_request {
    my ($packets, $middle_delay, $timeout, $block) = @_;
    my $name = $block->name;

    my @bits = @$packets;
    my $head_req = (join '', map { $_->{value} } @bits) =~ /^\s*HEAD\s+/
                   ? 1 : 0;

    my $addr = scalar($block->server_addr_for_client);
    $addr = $ServerAddr unless defined $addr;

    my $sock;
    for my $try (1 .. 30) {
        $sock = IO::Socket::INET->new(PeerAddr => $addr,
                                      PeerPort => $ServerPortForClient,
                                      Proto    => 'tcp',
                                      Timeout  => $timeout);
        last if $sock;
        my $err = $!;
        if (defined $ChildPid && !is_running($ChildPid)) {
            Test::More::fail("$name - Can't connect to $addr:"
                             . "$ServerPortForClient: $err (nginx is gone)");
            return (undef, $head_req);
        }
        Time::HiRes::sleep($try < 10 ? 0.05 : 0.2);
    }
    if (!$sock) {
        my $msg = "$name - Can't connect to $addr:$ServerPortForClient: $! "
                  . "(aborted)\n";
        if (++$TotalConnectingTimeouts < 3) {
            Test::More::fail($msg);
            return (undef, $head_req);
        }
        bail_out($msg);
    }
    $sock->blocking(0);

    local $SIG{PIPE} = 'IGNORE';
    my $resp = '';
    my $cur = shift @bits;
    my $buf = $cur->{value};
    $buf = '' unless defined $buf;
    my $woff = 0;
    my ($reading, $writing) = (1, 1);
    my $sel = IO::Select->new($sock);

    while ($reading || $writing) {
        my ($r, $w) = IO::Select->select($reading ? $sel : undef,
                                         $writing ? $sel : undef,
                                         undef, $timeout);
        if (!$r && !$w) {
            if ($! == Errno::EINTR) { next }
            close $sock;
            if (!defined scalar($block->abort)) {
                Test::More::fail("ERROR: client socket timed out - $name\n");
            } else {
                Time::HiRes::sleep(0.005);
            }
            return ($resp, $head_req);
        }

        if ($w && @$w) {
          WRITE:
            while (1) {
                if ($woff < length $buf) {
                    my $n = syswrite($sock, $buf, length($buf) - $woff, $woff);
                    if (!defined $n) {
                        last WRITE if $! == Errno::EAGAIN
                                      || $! == Errno::EWOULDBLOCK;
                        warn "write failed: $!\n";
                        $resp = "write failed: $!" if $resp eq '';
                        $writing = 0;
                        last WRITE;
                    }
                    $woff += $n;
                    next WRITE;
                }
                my $next = shift @bits;
                if (!defined $next) {
                    $writing = 0;
                    if (defined(my $how = scalar($block->shutdown))) {
                        $how = 1 if $how =~ /^\s*$/;
                        shutdown($sock, $how);
                    }
                    last WRITE;
                }
                my $delay = defined $next->{delay_before}
                            ? $next->{delay_before} : $middle_delay;
                Time::HiRes::sleep($delay) if $delay;
                $buf = defined $next->{value} ? $next->{value} : '';
                $woff = 0;
            }
        }

        if ($r && @$r) {
          READ:
            while (1) {
                my $chunk;
                my $n = sysread($sock, $chunk, 8192);
                if (!defined $n) {
                    last READ if $! == Errno::EAGAIN
                                 || $! == Errno::EWOULDBLOCK;
                    warn "WARNING: $name - HTTP response read failure: $!\n";
                    ($reading, $writing) = (0, 0);
                    last READ;
                }
                if ($n == 0) {
                    ($reading, $writing) = (0, 0);
                    last READ;
                }
                $resp .= $chunk;
            }
        }
    }

    close $sock;
    return ($resp, $head_req);
}

# Returns ($res, $raw_headers, $left): an HTTP::Response with the decoded
# body, the raw header block and the bytes after this response (the next
# pipelined response).  An empty list on a broken chunked body.
sub parse_response {
    my ($name, $raw, $head_req) = @_;
    my $left;

    my $raw_headers = '';
    if ($raw =~ /(.*?\r\n)\r\n/s) {
        $raw_headers = $1;
    }

    my $res = HTTP::Response->parse($raw);
    my $code = $res->code;
    if (defined $code && $code !~ /^\d+$/) {
        undef $code;
        $res->code(undef);
    }
    return ($res, $raw_headers) if $code && ($code == 304 || $code == 101);

    my $enc = $res->header('Transfer-Encoding');
    my $len = $res->header('Content-Length');

    if (defined $enc && $enc eq 'chunked') {
        my $body = $res->content;
        $body = '' unless defined $body;
        my $decoded = '';
        my $pos = 0;
        while (1) {
            pos($body) = $pos;
            if ($body =~ /\G0[ \t]*\r\n\r\n/gc) {
                $left = substr($body, pos $body)
                    if pos($body) < length $body;
                last;
            }
            pos($body) = $pos;
            if ($body =~ /\G[ \t]*([A-Fa-f0-9]+)[ \t]*\r\n/gc) {
                my $size = hex $1;
                my $start = pos $body;
                if ($start + $size > length $body) {
                    Test::More::fail("$name - invalid chunked data received "
                        . "(not enough octets for the data section)");
                    return;
                }
                $decoded .= substr($body, $start, $size);
                $pos = $start + $size;
                if (substr($body, $pos, 2) ne "\r\n") {
                    Test::More::fail("$name - invalid chunked data received "
                                     . "(expected CRLF).");
                    return;
                }
                $pos += 2;
            } elsif ($pos < length $body) {
                Test::More::fail("$name - invalid chunked body received: "
                                 . substr($body, $pos));
                return;
            } else {
                Test::More::fail("$name - no last chunk found - $body");
                return;
            }
        }
        $res->content($decoded);

    } elsif (defined $len && $len ne '' && $len =~ /^\d+$/) {
        my $body = $res->content;
        $body = '' unless defined $body;
        if (length $body < $len) {
            warn "WARNING: $name - response body truncated: $len expected, "
                 . "but got ", length $body, "\n" unless $head_req;
        } elsif (length $body > $len) {
            $left = substr($body, $len);
            $res->content(substr($body, 0, $len));
        }
    }

    return ($res, $raw_headers, $left);
}

sub get_indexed_value {
    my ($name, $value, $req_idx, $need_array) = @_;
    if ($need_array) {
        return $value->[$req_idx] if ref $value eq 'ARRAY';
        bail_out("$name - You asked for many requests, the expected results "
                 . "should be arrays as well.");
    }
    if (ref $value eq 'ARRAY') {
        bail_out("$name - SHOULD NOT HAPPEN: idx != 0 and don't need array.")
            if $req_idx != 0;
        return $value->[0];
    }
    return $value;
}

sub run_test_helper {
    my ($block, $repeated_req_idx) = @_;
    my $name = $block->name;

    my $reqs = get_req_from_block($block);
    bail_out("$name - request empty") unless @$reqs;

    my $timeout = parse_time(scalar($block->timeout));
    $timeout = $Timeout unless defined $timeout;

    my $res;
    my $req_idx = 0;
    my ($n, $need_array);

    for my $one_req (@$reqs) {
        my ($raw, $head_req) = send_request($one_req,
                                            scalar($block->raw_request_middle_delay),
                                            $timeout, $block);
        if (scalar($block->pipelined_requests)) {
            $n = @{ scalar($block->pipelined_requests) };
            $need_array = 1;
        } else {
            $need_array = @$reqs > 1;
        }

        while (1) {
            $raw = '' unless defined $raw;
            my ($raw_headers, $left);

            if (!defined scalar($block->ignore_response)) {
                if (defined scalar($block->http09)) {
                    $res = HTTP::Response->new(200, 'OK', [], $raw);
                    $raw_headers = '';
                } else {
                    ($res, $raw_headers, $left) =
                        parse_response($name, $raw, $head_req);
                }
            }

            if (!$n) {
                if (defined $left && length $left) {
                    (my $l = $left) =~ s/([\0-\037\200-\377])/
                                         sprintf('\x{%02x}', ord $1)/ge;
                    warn "WARNING: $name - unexpected extra bytes after last "
                         . "chunk in response: \"$l\"\n";
                }
            } else {
                $raw = $left;
                $n--;
            }

            if (!defined scalar($block->ignore_response)) {
                check_error_code($block, $res, $req_idx, $need_array);
                check_raw_response_headers($block, $raw_headers, $req_idx,
                                           $need_array);
                check_response_headers($block, $res, $raw_headers, $req_idx,
                                       $need_array);
                transform_response_body($block, $res, $req_idx);
                check_response_body($block, $res, $req_idx,
                                    $repeated_req_idx, $need_array);
            }

            if ($n || $req_idx < @$reqs - 1) {
                Time::HiRes::sleep(scalar($block->wait)) if scalar($block->wait);
                check_error_log($block, $res, $repeated_req_idx, $need_array);
                check_access_log($block, $repeated_req_idx)
                    unless defined scalar($block->ignore_response);
            }

            $req_idx++;
            last unless $n;
        }
    }

    Time::HiRes::sleep(scalar($block->wait)) if scalar($block->wait);

    check_error_log($block, $res, $repeated_req_idx, $need_array);
    check_access_log($block, $repeated_req_idx)
        unless defined scalar($block->ignore_response);
}

#---------------------------------------------------------------------------
# checks; each emits exactly the assertions the real runner emits
#---------------------------------------------------------------------------

sub check_error_code {
    my ($block, $res, $req_idx, $need_array) = @_;
    my $name = $block->name;
    my $got = ($res && $res->code) || '';

    if (defined scalar($block->error_code_like)) {
        my $val = get_indexed_value($name, scalar($block->error_code_like), $req_idx,
                                    $need_array);
        Test::More::like($got, qr/$val/sm, "$name - status code ok");
    } elsif (defined scalar($block->error_code)) {
        Test::More::is($got, get_indexed_value($name, scalar($block->error_code),
                                               $req_idx, $need_array),
                       "$name - status code ok");
    } else {
        Test::More::is($got, 200, "$name - status code ok");
    }
}

sub check_raw_response_headers {
    my ($block, $raw_headers, $req_idx, $need_array) = @_;
    my $name = $block->name;
    $raw_headers = '' unless defined $raw_headers;

    if (defined scalar($block->raw_response_headers_like)) {
        my $re = get_indexed_value($name, scalar($block->raw_response_headers_like),
                                   $req_idx, $need_array);
        Test::More::like($raw_headers, qr/$re/s,
                         "$name - raw resp headers like");
    }
    if (defined scalar($block->raw_response_headers_unlike)) {
        my $re = get_indexed_value($name, scalar($block->raw_response_headers_unlike),
                                   $req_idx, $need_array);
        Test::More::unlike($raw_headers, qr/$re/s,
                           "$name - raw resp headers unlike");
    }
}

# "Name: value" expects the value ("Name:" expects it empty or absent),
# "!Name" (or a line without a colon) expects no such header at all.
# Returns [name, value-or-undef] pairs, one per distinct name, last wins.
sub parse_expected_headers {
    my $text = shift;
    $text = '' unless defined $text;
    my (%seen, @order);
    for my $line (split /\n/, $text) {
        $line =~ s/^\s+|\s+$//g;
        my ($key, $val);
        if ($line =~ s/^!\s*//) {
            $key = $line;
        } else {
            ($key, $val) = split /\s*:\s*/, $line, 2;
            $key = '' unless defined $key;
        }
        push @order, $key unless exists $seen{$key};
        $seen{$key} = $val;
    }
    return map { [$_, $seen{$_}] } @order;
}

sub check_response_headers {
    my ($block, $res, $raw_headers, $req_idx, $need_array) = @_;
    my $name = $block->name;
    $raw_headers = '' unless defined $raw_headers;

    if (defined scalar($block->response_headers)) {
        my @hdrs = parse_expected_headers(
            get_indexed_value($name, scalar($block->response_headers), $req_idx,
                              $need_array));
        for my $h (@hdrs) {
            my ($key, $val) = @$h;
            if (!defined $val) {
                Test::More::unlike($raw_headers, qr/^\s*\Q$key\E\s*:/mi,
                    "$name - header $key not present in the raw headers");
                next;
            }
            $val =~ s/\$ServerPort\b/$ServerPort/g;
            $val =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
            my $actual = $res ? $res->header($key) : undef;
            $actual = '' unless defined $actual;
            Test::More::is($actual, $val, "$name - header $key ok");
        }
    } elsif (defined scalar($block->response_headers_like)) {
        my @hdrs = parse_expected_headers(
            get_indexed_value($name, scalar($block->response_headers_like), $req_idx,
                              $need_array));
        for my $h (@hdrs) {
            my ($key, $val) = @$h;
            $val = '' unless defined $val;
            my $actual = $res ? $res->header($key) : undef;
            $actual = '' unless defined $actual;
            Test::More::like($actual, qr/^$val$/, "$name - header $key like ok");
        }
    }
}

sub run_body_filter {
    my ($block, $filter, $content) = @_;
    my $name = $block->name;
    if (ref $filter eq 'CODE') {
        return $filter->($content);
    }
    if (ref $filter) {
        bail_out("$name - the --- response_body_filters section only supports "
                 . "subroutine reference values and string values");
    }
    my %builtin = (
        md5_hex  => sub { require Digest::MD5; Digest::MD5::md5_hex($_[0]) },
        sha1_hex => sub { require Digest::SHA; Digest::SHA::sha1_hex($_[0]) },
        uc       => sub { uc $_[0] },
        lc       => sub { lc $_[0] },
        ucfirst  => sub { ucfirst $_[0] },
        lcfirst  => sub { lcfirst $_[0] },
        length   => sub { length $_[0] },
    );
    my $f = $builtin{$filter}
        or bail_out("$name - unknown filter, \"$filter\", specified in the "
                    . "--- response_body_filters section");
    return $f->($content);
}

sub transform_response_body {
    my ($block, $res, $req_idx) = @_;
    return unless defined $res;
    my $filters = scalar($block->response_body_filters);
    return unless defined $filters;
    my $content = $res->content;
    return unless defined $content;
    my $name = $block->name;

    if (!ref $filters) {
        $filters =~ s/^\s+|\s+$//g;
        $filters = [split /\s+/, $filters];
    } elsif (ref $filters ne 'ARRAY') {
        $filters = [$filters];
    }
    if (@$filters && ref $filters->[0] eq 'ARRAY') {
        for my $elem (@$filters) {
            bail_out("$name - the --- response_body_filters two-dimensional "
                     . "array only be like [[uc], [lc]] not [[uc], lc]")
                if ref $elem ne 'ARRAY';
        }
        $filters = $filters->[$req_idx];
        bail_out("$name - the ---response_body_filters two-dimensional array "
                 . "unmatch the specified request($req_idx)")
            unless defined $filters;
    }
    for my $f (@$filters) {
        $content = run_body_filter($block, $f, $content);
    }
    $res->content($content);
}

sub check_response_body {
    my ($block, $res, $req_idx, $repeated_req_idx, $need_array) = @_;
    my $name = $block->name;

    my $content = $res ? $res->content : undef;
    if (defined $content) {
        $content =~ s/^TE: deflate,gzip;q=0\.3\r\n//gm;
        $content =~ s/^Connection: TE, close\r\n//gm;
    }

    if (defined scalar($block->response_body) || defined scalar($block->response_body_eval)) {
        my $expected;
        if (scalar($block->response_body_eval)) {
            Test::More::diag("$name - response_body_eval is DEPRECATED. Use "
                             . "response_body eval instead.");
            $expected = eval get_indexed_value($name,
                                               scalar($block->response_body_eval),
                                               $req_idx, $need_array);
            warn $@ if $@;
        } else {
            $expected = get_indexed_value($name, scalar($block->response_body),
                                          $req_idx, $need_array);
        }
        if (my $charset = scalar($block->charset)) {
            require Encode;
            Encode::from_to($expected, 'UTF-8', $charset);
        }
        if (defined $expected && !ref $expected) {
            $expected =~ s/\$ServerPort\b/$ServerPort/g;
            $expected =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
        }

        if (ref $expected) {
            Test::More::like($content, $expected, "$name - response_body - "
                . "like (repeated req $repeated_req_idx, req $req_idx)");
        } elsif ($NoLongString) {
            Test::Base::is($content, $expected, "$name - response_body - "
                . "response is expected (repeated req $repeated_req_idx, "
                . "req $req_idx)");
        } else {
            Test::LongString::is_string($content, $expected,
                "$name - response_body - response is expected (repeated req "
                . "$repeated_req_idx, req $req_idx)");
        }

    } elsif (defined scalar($block->response_body_like)
             || defined scalar($block->response_body_unlike))
    {
        my ($patterns, $type) = defined scalar($block->response_body_like)
            ? (scalar($block->response_body_like), 'like')
            : (scalar($block->response_body_unlike), 'unlike');
        my $pat = get_indexed_value($name, $patterns, $req_idx, $need_array);
        if (!ref $pat) {
            $pat =~ s/\$ServerPort\b/$ServerPort/g;
            $pat =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
        }
        my $summary = trim_summary($content);
        my $desc = "$name - response_body_$type - response is expected "
                   . "($summary)";
        if ($type eq 'like') {
            Test::More::like($content, qr/$pat/s, $desc);
        } else {
            Test::More::unlike($content, qr/$pat/s, $desc);
        }
    }

    for my $check (@ResponseBodyChecks) {
        $check->($block, $res ? $res->content : undef, $req_idx,
                 $repeated_req_idx, 0);
    }
}

sub pattern_list {
    my $pats = shift;
    if (!ref $pats) {
        chomp $pats;
        return [split /\n+/, $pats];
    }
    return [$pats] if ref $pats eq 'Regexp';
    return [@$pats];
}

sub line_matches {
    my ($line, $pat) = @_;
    return ref $pat ? $line =~ /$pat/ : index($line, $pat) >= 0;
}

sub value_contains {
    my ($val, $needle) = @_;
    return 0 unless defined $val;
    if (!ref $val || ref $val eq 'Regexp') {
        return index("$val", $needle) >= 0;
    }
    if (ref $val eq 'ARRAY') {
        for my $v (@$val) {
            return 1 if value_contains($v, $needle);
        }
    }
    return 0;
}

# The lines nginx added to the error log since the previous call for this
# block (all lines of the block's log with check_accum_error_log).
sub error_log_data {
    Time::HiRes::sleep($TestNginxSleep * 3);
    open my $in, '<', $ErrLogFile or return [];
    my $size = -s $in;
    $ErrLogFilePos = 0 if $ErrLogFilePos > $size;   # truncated meanwhile
    seek $in, $ErrLogFilePos, 0 if !$CheckAccumErrLog && $ErrLogFilePos > 0;
    my @lines = <$in>;
    $ErrLogFilePos = tell $in unless $CheckAccumErrLog;
    close $in;
    return \@lines;
}

sub access_log_data {
    Time::HiRes::sleep($TestNginxSleep * 3);
    open my $in, '<', $AccLogFile or return [];
    my @lines = <$in>;
    close $in;
    return \@lines;
}

sub check_log_patterns {
    my ($name, $lines, $want, $forbid, $file, $req) = @_;

    if (defined $want) {
        my $pats = pattern_list($want);
        for my $line (@$lines) {
            for my $pat (@$pats) {
                next unless defined $pat;
                if (line_matches($line, $pat)) {
                    Test::More::pass("$name - pattern \"$pat\" matches a line "
                                     . "in $file (req $req)");
                    undef $pat;
                }
            }
        }
        for my $pat (@$pats) {
            next unless defined $pat;
            Test::More::fail("$name - pattern \"$pat\" should match a line in "
                             . "$file (req $req)");
        }
    }

    if (defined $forbid) {
        my $pats = pattern_list($forbid);
        my %found;
        for my $i (0 .. $#$lines) {
            my $line = $lines->[$i];
            for my $pat (@$pats) {
                next unless defined $pat;
                next unless line_matches($line, $pat);
                $found{$pat} = 1;
                my @more = @$lines[$i + 1 .. List::Util::min($i + 9,
                                                              $#$lines)];
                Test::More::fail("$name - pattern \"" . fmt_str($pat)
                    . "\" should not match any line in $file but matches line "
                    . "\"" . fmt_str($line) . "\" (req $req)\n"
                    . join('', @more));
            }
        }
        for my $pat (@$pats) {
            next if !defined $pat || $found{$pat};
            Test::More::pass("$name - pattern \"" . fmt_str($pat)
                             . "\" does not match a line in $file (req $req)");
        }
    }
}

sub check_error_log {
    my ($block, $res, $repeated_req_idx, $need_array, $extra) = @_;
    my $name = $block->name;
    my $lines;
    my $get_lines = sub {
        $lines ||= [@{ error_log_data() }, @{ $extra || [] }];
    };

    my $grep_pat;
    my $grep_pats = scalar($block->grep_error_log);
    if (defined $grep_pats) {
        $grep_pat = ref $grep_pats eq 'ARRAY'
                    ? $grep_pats->[$repeated_req_idx] : $grep_pats;
    } elsif (defined scalar($block->grep_error_log_out)) {
        bail_out("$name - No --- grep_error_log defined but "
                 . "--- grep_error_log_out is defined");
    }

    if (defined $grep_pat) {
        my $expected = scalar($block->grep_error_log_out);
        bail_out("$name - No --- grep_error_log_out defined but "
                 . "--- grep_error_log is defined") unless defined $expected;
        $expected = $expected->[$repeated_req_idx]
            if ref $expected eq 'ARRAY';

        my $matched = '';
        for my $line (@{ $get_lines->() }) {
            my $m;
            if (ref $grep_pat) {
                $m = $& if $line =~ /$grep_pat/;
            } elsif (index($line, $grep_pat) >= 0) {
                $m = $grep_pat;
            }
            $matched .= "$m\n" if defined $m && $m !~ /\n/;
        }
        my $desc = "$name - grep_error_log_out (req $repeated_req_idx)";
        if (ref $expected eq 'Regexp') {
            Test::More::like($matched, $expected, $desc);
        } elsif ($NoLongString) {
            Test::More::is($matched, $expected, $desc);
        } else {
            Test::LongString::is_string($matched, $expected, $desc);
        }
    }

    my ($warn_alert, $warn_crit, $warn_emerg) = (1, 1, 1);
    for my $v (scalar($block->error_log), scalar($block->no_error_log)) {
        $warn_alert = 0 if value_contains($v, '[alert');
        $warn_crit  = 0 if value_contains($v, '[crit');
        $warn_emerg = 0 if value_contains($v, '[emerg');
    }

    if (defined scalar($block->error_log) || defined scalar($block->no_error_log)) {
        check_log_patterns($name, $get_lines->(), scalar($block->error_log),
                           scalar($block->no_error_log), 'error.log',
                           $repeated_req_idx);
    }

    # like the real runner: unexpected alerts are reported, not counted
    $get_lines->();
    for my $line (@$lines) {
        if (($warn_alert && $line =~ /\[alert\]/)
            || ($warn_crit && $line =~ /\[crit\]/)
            || ($warn_emerg && $line =~ /\[emerg\]/))
        {
            warn "WARNING: $name - " . fmt_str($line) . "\n";
        }
        if ($line =~ /\bAssertion .*?failed\b/) {
            (my $l = $line) =~ s/\s+$//;
            Test::More::fail("$name - $l\n");
        }
    }
}

sub check_access_log {
    my ($block, $repeated_req_idx) = @_;
    return unless defined scalar($block->access_log)
                  || defined scalar($block->no_access_log);
    check_log_patterns($block->name, access_log_data(), scalar($block->access_log),
                       scalar($block->no_access_log), 'access.log', $repeated_req_idx);
}

# Best effort: valgrind wrote one log per process (valgrind.<pid>.log); a
# definite leak or an invalid access fails the block (an extra, failing
# assertion, so a clean run keeps the plan).
sub check_valgrind_logs {
    my $name = shift;
    my $pattern = defined $ValgrindLogs ? $ValgrindLogs
                                        : "$LogDir/valgrind.%p.log";
    my $own = $pattern ne "$LogDir/valgrind.%p.log";
    (my $glob = $pattern) =~ s/%(?:p|q\{[^}]*\}|n)/*/g;
    for my $log (sort glob($glob)) {
        next if $ValgrindChecked{$log}++;
        my $text = slurp($log);
        my @bad = grep {
            /\bare definitely lost in loss record\b/
            || /\bInvalid (?:read|write) of size\b/
            || /\bInvalid (?:free|delete|realloc)\b/
            || /\bMismatched free\b/
            || /\bdepends on uninitialised value/
            || /\bUse of uninitialised value\b/
            || /\bpoints to uninitialised byte/
        } split /^/m, $text;
        if (@bad) {
            Test::More::fail("$name - valgrind reported memory errors in "
                             . "$log");
            Test::More::diag($text);
        } elsif ($text =~ /\S/) {
            Test::More::diag("$name - valgrind output ($log):\n$text");
        }
        rename $log, "$log.checked" unless $own;
    }
}

#---------------------------------------------------------------------------
# never leave an nginx behind
#---------------------------------------------------------------------------

for my $sig (qw(INT TERM HUP)) {
    my $cur = $SIG{$sig};
    next if defined $cur && $cur ne '' && $cur ne 'DEFAULT';
    $SIG{$sig} = sub {
        if (!$InSubprocess) {
            eval { cleanup() };
            eval { stop_nginx("signal $sig") };
        }
        $SIG{$sig} = 'DEFAULT';
        kill $sig, $$;
    };
}

END {
    if (!$InSubprocess) {
        local $?;
        eval { cleanup() };
        if ($UseValgrind || !$ENV{TEST_NGINX_NO_CLEAN}) {
            eval { stop_nginx('END') };
            # a randomized run owns its t/servroot_PORT directory
            if ($Randomize && $ServRoot =~ m{/t/servroot_\d+$}
                && -d $ServRoot)
            {
                File::Path::remove_tree($ServRoot);
            }
        }
    }
}

1;
