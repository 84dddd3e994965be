#!/usr/bin/perl
# The limit rules' C unit tests (the admin endpoint's JSON validation, the
# stored form, the JSON answers): builds them when needed (t/unit/build.sh
# only rebuilds what is stale) and hands over to the binary, whose TAP
# prove then reads as this test's own.

use strict;
use warnings;

use FindBin;

chdir "$FindBin::Bin/.." or die "chdir: $!";

# the compiler's lines go to stderr, stdout carries TAP only
if (system('sh t/unit/build.sh 1>&2') != 0) {
    print "1..1\nnot ok 1 - build the unit tests with sh t/unit/build.sh\n";
    exit 1;
}

exec 'build/unit/rule_test' or die "exec build/unit/rule_test: $!";
