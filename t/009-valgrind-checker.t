# scripts/valgrind-check.pl, the verdict of make test-valgrind, on real
# valgrind logs: a program with errors in functions named like the module's
# fails it; errors outside such frames are listed but pass; a clean log
# passes.  Skipped without valgrind or a C compiler.

use strict;
use warnings;

use File::Temp qw(tempdir);
use Test::More;

plan skip_all => 'valgrind is not installed (scripts/deps.sh --valgrind)'
    unless `sh -c 'command -v valgrind'` =~ /\S/;
plan skip_all => 'no C compiler' unless `sh -c 'command -v cc'` =~ /\S/;

my $dir = tempdir('rltest-vgcheck-XXXXXX', TMPDIR => 1, CLEANUP => 1);

sub run_under_valgrind {
    my ($name, $c) = @_;
    open my $fh, '>', "$dir/$name.c" or die $!;
    print $fh "#include <stdlib.h>\n#include <stdio.h>\n$c";
    close $fh;
    system('cc', '-g', '-O0', '-o', "$dir/$name", "$dir/$name.c") == 0
        or die "cc failed\n";
    mkdir "$dir/$name.logs";
    system("valgrind -q --leak-check=full --show-possibly-lost=no "
           . "--errors-for-leak-kinds=definite --track-origins=yes "
           . "--log-file=$dir/$name.logs/$name.%p.log $dir/$name >/dev/null 2>&1");
    my $out = `perl scripts/valgrind-check.pl $dir/$name.logs`;
    return ($? >> 8, $out);
}

my ($rc, $out) = run_under_valgrind('module', <<'EOF_C');
__attribute__((noinline)) static int rl_read_past(void)
{ char *p = malloc(8); int r = p[9]; free(p); return r; }
__attribute__((noinline)) int ngx_http_ratelimit_leak(void)
{ char *p = malloc(32); p[0] = 1; return p[0]; }
__attribute__((noinline)) static int nginx_core(void)
{ char *p = malloc(4); free(p); return p[1]; }
int main(void)
{ printf("%d %d %d\n", rl_read_past(), ngx_http_ratelimit_leak(), nginx_core()); return 0; }
EOF_C
is $rc, 1, 'errors in module frames fail the check';
like $out, qr/Invalid read of size 1\n\s+at 0x\w+: rl_read_past/,
    'an invalid read in rl_* is reported with its stack';
like $out, qr/32 bytes in 1 blocks are definitely lost.*\n.*\n\s+by 0x\w+: ngx_http_ratelimit_leak/,
    'a definite leak allocated in ngx_http_ratelimit_* is reported';
like $out, qr/not the module's.*\n.*\n\s+Invalid read of size 1\n\s+at 0x\w+: nginx_core/,
    'an error with no module frame is listed apart';

($rc, $out) = run_under_valgrind('outside', <<'EOF_C');
__attribute__((noinline)) static int nginx_core(void)
{ char *p = malloc(4); free(p); return p[1]; }
int main(void) { printf("%d\n", nginx_core()); return 0; }
EOF_C
is $rc, 0, 'errors outside the module alone pass' or diag $out;
like $out, qr/0 in the module's code/, 'and are counted as such';

($rc, $out) = run_under_valgrind('clean', "int main(void) { return 0; }\n");
is $rc, 0, 'a clean run passes' or diag $out;

# a leak whose stack valgrind could not name (the module unloaded at exit,
# without --keep-debuginfo=yes) cannot be cleared as nginx's
mkdir "$dir/unnamed.logs";
open my $fh, '>', "$dir/unnamed.logs/x.1.log" or die $!;
print $fh <<'EOF_LOG';
==1== 16 bytes in 1 blocks are definitely lost in loss record 3 of 9
==1==    at 0x48417B4: malloc (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)
==1==    by 0x154CFE: ngx_alloc (in /usr/sbin/nginx)
==1==    by 0x4A3B2C1: ???
==1==    by 0x159B2C: ??? (in /usr/sbin/nginx)
==1== 
EOF_LOG
close $fh;
`perl scripts/valgrind-check.pl $dir/unnamed.logs`;
is $? >> 8, 1, 'an error in code valgrind cannot name fails the check';

done_testing;
