# The Debian package: `make deb` builds it, apt-get installs it, Debian's own
# nginx loads it through its stock /etc/nginx/nginx.conf and enforces a limit
# written in one conf.d file, and a purge takes it away again, leaving
# /etc/nginx as it was.
#
# Root only (it installs a package), and only where the package's build
# dependencies are installed (`sh scripts/deps.sh --deb`); it skips
# otherwise, and when the package is already installed (it is someone
# else's then).  Never leaves the package installed.
#
# nginx runs as `nginx -c /etc/nginx/nginx.conf`, in a mount namespace of
# its own (unshare) where private empty directories cover /run (its pid
# file), /var/log/nginx, /var/lib/nginx (its logs and temporary files), and
# /etc/nginx/conf.d and /etc/nginx/sites-enabled: conf.d holds only the file
# this test writes, and the stock default site, which would listen on port
# 80 of every address, is left out.  Nothing of the system's nginx is read,
# written or signalled; the package's modules-enabled link is the real one.

use strict;
use warnings;

use Digest::MD5;
use File::Find;
use File::Temp qw(tempdir);
use HTTP::Tiny;
use POSIX qw(:sys_wait_h);
use Test::More;
use Time::HiRes qw(sleep time);

use lib 't/lib';
use RLTest qw(unique_key);
use RLTest::Redis;

my $PACKAGE   = 'libnginx-mod-http-ratelimit';
my $MODULE    = '/usr/lib/nginx/modules/ngx_http_ratelimit_module.so';
my $AVAILABLE = '/usr/share/nginx/modules-available/mod-http-ratelimit.conf';
my $ENABLED   = '/etc/nginx/modules-enabled/50-mod-http-ratelimit.conf';
my $NGINX     = '/usr/sbin/nginx';

sub have { !system "command -v $_[0] >/dev/null 2>&1" }

# installed, or anything short of purged (config-files, half-installed...)
sub installed {
    my $status = `dpkg-query -W -f='\${Status}' $PACKAGE 2>/dev/null`;
    my ($state) = $status =~ /(\S+)\s*$/;
    return defined $state && $state ne 'not-installed';
}

plan skip_all => 'installs a Debian package: root only' if $> != 0;
plan skip_all => 'dpkg-buildpackage not installed (sh scripts/deps.sh --deb)'
    unless have('dpkg-buildpackage');
plan skip_all => 'build dependencies of the package missing (sh scripts/deps.sh --deb)'
    if system('dpkg-checkbuilddeps >/dev/null 2>&1');
plan skip_all => "unshare, apt-get or $NGINX missing"
    unless have('unshare') && have('apt-get') && -x $NGINX;
plan skip_all => "$PACKAGE is already installed: not ours to remove"
    if installed();
plan skip_all => 'no mount namespace for nginx (unshare --mount fails)'
    if system('unshare --mount true >/dev/null 2>&1');
plan skip_all => "the system's nginx runs: installing a module would reload it"
    if system_nginx_runs();

# the pid in /run/nginx.pid, when that process lives
sub system_nginx_runs {
    open my $fh, '<', '/run/nginx.pid' or return 0;
    my $pid = <$fh>;
    return defined $pid && $pid =~ /^(\d+)/ && kill 0, $1;
}

# a bounded run: past this the test dies, and END cleans up
my $DEADLINE = 170;
$SIG{ALRM} = sub { die "t/500-deb.t: still running after ${DEADLINE}s\n" };
alarm $DEADLINE;

my $work = tempdir('rltest-deb-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $work;

my ($we_installed, $nginx_pid);

# what the given trees hold: every path, its type, mode, owner, link target,
# content; the system's nginx directories before and after must match
sub snapshot {
    my %seen;
    find({ no_chdir => 1, wanted => sub {
        my $p = $File::Find::name;
        my @st = lstat $p or return;
        my $what = sprintf '%o %d:%d', $st[2], $st[4], $st[5];
        if (-l _) {
            $what .= ' -> ' . readlink $p;
        } elsif (-f _) {
            open my $fh, '<', $p or return;
            binmode $fh;
            $what .= ' md5 ' . Digest::MD5->new->addfile($fh)->hexdigest;
        }
        $seen{$p} = $what;
    } }, grep { -e } @_);
    return \%seen;
}

my @SYSTEM = qw(/etc/nginx /var/log/nginx /var/lib/nginx /run/nginx.pid);

sub apt_get {
    my (@args) = @_;
    local $ENV{DEBIAN_FRONTEND} = 'noninteractive';
    my $cmd = join ' ', 'apt-get', '-y', '-q', '-o', 'DPkg::Lock::Timeout=60',
        @args;
    my $out = `$cmd 2>&1`;
    return ($? >> 8, $out);
}

sub stop_nginx {
    return unless $nginx_pid;
    my @workers = split ' ', `pgrep -P $nginx_pid 2>/dev/null`;
    kill 'TERM', $nginx_pid;
    my $end = time + 10;
    while (time < $end) {
        last if waitpid($nginx_pid, WNOHANG) == $nginx_pid;
        sleep 0.05;
    }
    if (kill 0, $nginx_pid) {
        kill 'KILL', $nginx_pid, grep { kill 0, $_ } @workers;
        waitpid($nginx_pid, 0);
    }
    undef $nginx_pid;
}

sub purge {
    return unless $we_installed;
    my ($rc, $out) = apt_get('purge', $PACKAGE);
    $we_installed = 0 unless installed();
    return ($rc, $out);
}

# ends the test early, after a failure that leaves nothing to test
sub finish {
    alarm 0;
    done_testing;
    exit;
}

END {
    my $status = $?;
    stop_nginx();
    purge() if $we_installed;
    $? = $status;
}

my $system_before = snapshot(@SYSTEM);

# --- build -----------------------------------------------------------------

delete @ENV{qw(MAKEFLAGS MFLAGS MAKELEVEL)};
my $version = `dpkg-parsechangelog -S Version`;
chomp $version;
my $arch = `dpkg --print-architecture`;
chomp $arch;
my $deb = "build/${PACKAGE}_${version}_$arch.deb";

my $build_out = `timeout 150 make -s deb 2>&1`;
is $?, 0, 'make deb succeeds' or diag $build_out;
ok -f $deb, "it built $deb" or finish();

my %field = map { $_ => scalar `dpkg-deb -f $deb $_` } qw(Package Depends);
chomp %field;
is $field{Package}, $PACKAGE, 'package name';
like $field{Depends}, qr/(?:^|, )nginx-abi-[\w.~+-]+/,
    "depends on the nginx ABI it was built against ($field{Depends})";
like $field{Depends}, qr/\blibhiredis[\w.]+ \(/, 'on hiredis (from shlibs)';
like $field{Depends}, qr/\blibyajl\d+ \(/, 'on yajl (from shlibs)';
like $field{Depends}, qr/\blibssl\d+ \(/, 'on libssl (from shlibs)';

my @files = split /\n/, `dpkg-deb -c $deb`;
for my $path ($MODULE, $AVAILABLE,
              '/usr/share/doc/libnginx-mod-http-ratelimit/README.Debian')
{
    ok((grep { m{ \.\Q$path\E$} } @files), "ships $path");
}

SKIP: {
    skip 'lintian not installed (sh scripts/deps.sh --deb)', 1
        unless have('lintian');
    my $out = `timeout 60 lintian --fail-on error $deb 2>&1`;
    my $rc = $? >> 8;
    my @errors = grep { /^E: / } split /\n/, $out;
    ok $rc == 0 && !@errors, 'lintian finds no error' or diag $out;
    diag "lintian: $_" for grep { /^[WI]: / } split /\n/, $out;
}

# --- install ----------------------------------------------------------------

# every dependency must already be installed: then apt-get needs no network
# (its --no-download refuses local .debs in apt 2.6, so ask it first)
my ($rc, $out) = apt_get('install', '--simulate', "./$deb");
my @inst = $out =~ /^Inst (\S+)/mg;
is_deeply \@inst, [$PACKAGE], 'apt-get would install the package alone'
    or diag $out;
@inst == 1 or finish();

($rc, $out) = apt_get('install', "./$deb");
$we_installed = 1 if installed();
is $rc, 0, "apt-get install ./$deb" or diag $out;
ok $we_installed, 'dpkg lists it installed' or finish();

ok -f $MODULE, "module in $MODULE";
is readlink($ENABLED), $AVAILABLE, "enabled: $ENABLED links to $AVAILABLE";
open my $fh, '<', $AVAILABLE;
my $load = $fh ? do { local $/; <$fh> } : '';
is $load, "load_module modules/ngx_http_ratelimit_module.so;\n",
    'its load_module line';

# --- Debian's nginx, stock nginx.conf, one conf.d file -----------------------

my $redis = RLTest::Redis->start;

my $port = $ENV{TEST_NGINX_PORT} && !RLTest::Redis::port_open($ENV{TEST_NGINX_PORT})
         ? $ENV{TEST_NGINX_PORT} : RLTest::Redis::free_port();

# README.Debian's five-line example, on this test's Redis, with a limit of 2
open $fh, '<', 'debian/README.Debian' or die "debian/README.Debian: $!";
my @example = grep { /^    ratelimit/ } <$fh>;
close $fh;
is scalar @example, 5, 'README.Debian has a five-line example';
s/127\.0\.0\.1:6379/127.0.0.1:${\ $redis->port}/, s/\b100 60s/2 60s/ for @example;

my %dir = map { $_ => "$work/$_" } qw(run log lib conf.d sites-enabled);
for (values %dir) { mkdir $_ or die "$_: $!"; chmod 0755, $_ }
open $fh, '>', "$dir{'conf.d'}/ratelimit-test.conf" or die $!;
print $fh @example, <<"CONF";

server {
    listen 127.0.0.1:$port;
    location / {
        empty_gif;
    }
}
CONF
close $fh;

$nginx_pid = fork;
die "fork: $!" unless defined $nginx_pid;
if ($nginx_pid == 0) {
    open STDOUT, '>', "$work/nginx.out";
    open STDERR, '>&', \*STDOUT;
    exec 'unshare', '--mount', '--propagation', 'private', 'sh', '-ec', <<'SH',
mount --bind "$1" /run
mount --bind "$2" /var/log/nginx
mount --bind "$3" /var/lib/nginx
mount --bind "$4" /etc/nginx/conf.d
mount --bind "$5" /etc/nginx/sites-enabled
exec "$6" -c /etc/nginx/nginx.conf -g 'daemon off;'
SH
        'sh', @dir{qw(run log lib conf.d sites-enabled)}, $NGINX
        or POSIX::_exit(127);
}

my $up = 0;
for (1 .. 200) {
    last if waitpid($nginx_pid, WNOHANG) == $nginx_pid;
    if (RLTest::Redis::port_open($port)) { $up = 1; last }
    sleep 0.05;
}
sub slurp { open my $f, '<', $_[0] or return ''; local $/; scalar <$f> }
ok $up, "Debian's nginx with the stock nginx.conf listens on 127.0.0.1:$port"
    or diag slurp("$work/nginx.out") . slurp("$dir{log}/error.log");

SKIP: {
    skip 'nginx did not start', 4 unless $up;
    my $http = HTTP::Tiny->new(keep_alive => 0, timeout => 10);
    my $user = unique_key('deb');
    my @r = map {
        $http->get("http://127.0.0.1:$port/x", { headers => { 'X-User-Id' => $user } })
    } 1 .. 3;
    is_deeply [ map { $_->{status} } @r ], [200, 200, 429],
        'limit of 2 enforced: 200, 200, 429'
        or diag explain [ map { "$_->{status} $_->{content}" } @r ];
    ok $r[2]{headers}{'retry-after'}, 'the 429 carries Retry-After';
    is $r[0]{headers}{'ratelimit-policy'}, '"default";q=2;w=60',
        'RateLimit-Policy of the conf.d file';
    is $http->get("http://127.0.0.1:$port/x",
                  { headers => { 'X-User-Id' => unique_key('other') } })->{status},
        200, 'another caller has a count of its own';
}

stop_nginx();

# --- purge --------------------------------------------------------------------

($rc, $out) = purge();
is $rc, 0, "apt-get purge $PACKAGE" or diag $out;
ok !installed(), 'no longer installed';
ok !-e $MODULE, 'module file gone';
ok !-l $ENABLED && !-e $ENABLED, 'modules-enabled link gone';
ok !-l "$ENABLED.removed", 'no .removed link left';
ok !-e $AVAILABLE, 'modules-available file gone';
is_deeply snapshot(@SYSTEM), $system_before,
    "@SYSTEM as they were before the test";

alarm 0;
done_testing;
