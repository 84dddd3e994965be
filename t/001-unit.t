#!/usr/bin/perl
# The C unit tests of the nginx-free code (src/rl_*.c): builds them when
# needed (t/unit/build.sh only rebuilds what is stale), runs every
# build/unit/*_test binary and reports each as a subtest, its TAP lines
# checked one by one, with its plan and its exit status.

use strict;
use warnings;

use FindBin;
use Test::More;

chdir "$FindBin::Bin/.." or die "chdir: $!";

# the compiler's lines go to stderr, stdout carries TAP only
is system('sh t/unit/build.sh 1>&2'), 0, 'the unit tests build (sh t/unit/build.sh)'
    or BAIL_OUT('unit tests do not build');

my @binaries = sort glob 'build/unit/*_test';
ok @binaries >= 3, 'there are unit test binaries: ' . join ' ', @binaries;

for my $binary (@binaries) {
    subtest $binary => sub {
        my @lines = `$binary`;
        my $status = $?;
        my ($planned, $ran) = (undef, 0);

        for my $line (@lines) {
            chomp $line;
            if ($line =~ /^1\.\.(\d+)/) {
                $planned = $1;
            } elsif ($line =~ /^(not )?ok \d+(?: - (.*))?$/) {
                $ran++;
                ok !defined $1, defined $2 ? $2 : "test $ran";
            } elsif ($line =~ /^#/) {
                note $line;
            }
        }

        is $ran, $planned, "ran the $planned tests it planned";
        is $status, 0, 'exited 0';
        done_testing;
    };
}

done_testing;
