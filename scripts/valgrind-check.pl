#!/usr/bin/perl
# valgrind-check.pl DIR|LOG...: reads valgrind memcheck logs (one per
# process, as scripts/run-valgrind.sh writes them) and fails when an error
# has a frame of the module's code in one of its stacks: an invalid read,
# write or free, a use of uninitialised memory, a definite leak, or a crash.
# Such errors are printed with their stacks, grouped and counted; errors
# whose stacks are nginx's or libc's alone are summed up, not failed on.
#
# Exit: 0 clean, 1 module errors, 2 no log to read.

use strict;
use warnings;

my @logs = map { -d $_ ? glob("$_/*.log") : $_ } @ARGV;
die "usage: valgrind-check.pl DIR|LOG...\n" unless @ARGV;
if (!@logs) {
    print "valgrind-check: no valgrind log in @ARGV: did nginx run?\n";
    exit 2;
}

my $failing = join '|', map { quotemeta } (
    'Invalid read of size', 'Invalid write of size', 'Invalid free',
    'Invalid delete', 'Invalid realloc', 'Mismatched free',
    'Conditional jump or move depends on uninitialised',
    'Use of uninitialised value', 'Source and destination overlap',
    'Process terminating with default action of signal');
$failing = qr/^(?:$failing|Syscall param .* uninitialised|Argument .* fishy|.* are definitely lost in loss record)/;

# a frame of the module, or of code valgrind cannot place at all ("???"
# without "(in object)": an unloaded .so, when --keep-debuginfo=yes is
# missing), which cannot be cleared as nginx's
my $module_frame = qr/(?:at|by)\ 0x[0-9A-Fa-f]+:\ (?:ngx_http_ratelimit_\w+|rl_\w+)\b
                     |\(in\ [^)]*ngx_http_ratelimit_module\.so\)
                     |(?:at|by)\ 0x[0-9A-Fa-f]+:\ \?\?\?\s*$/xm;

my (%module, %other);    # signature => { count, text, logs }
my $records = 0;

for my $log (@logs) {
    open my $fh, '<', $log or die "$log: $!\n";
    my (@rec, @all);
    while (my $line = <$fh>) {
        chomp $line;
        if ($line =~ s/^==\d+== ?//) {
            if ($line eq '') {
                push @all, [@rec] if @rec;
                @rec = ();
            } else {
                push @rec, $line;
            }
        }
        # other lines: --gen-suppressions output, not needed here
    }
    push @all, [@rec] if @rec;
    close $fh;

    (my $suite = $log) =~ s{.*/}{};
    $suite =~ s/\.\d+\.log$//;

    for my $r (@all) {
        next unless $r->[0] =~ $failing;
        $records++;
        my $text = join "\n", @$r;
        # the signature: the kind without sizes and addresses, and the
        # function names of the stacks
        (my $kind = $r->[0]) =~ s/[\d,]+ (?:\(\S+ direct, \S+ indirect\) )?bytes in [\d,]+ blocks/N bytes/;
        $kind =~ s/loss record [\d,]+ of [\d,]+/loss record/;
        $kind =~ s/of size \d+/of size N/;
        my $sig = join '|', $kind,
            map { /: (\S+)/ ? $1 : () } grep { /^\s+(?:at|by) 0x/ } @$r;
        my $bucket = $text =~ $module_frame ? \%module : \%other;
        my $e = $bucket->{$sig} ||= { count => 0, text => $text, suites => {} };
        $e->{count}++;
        $e->{suites}{$suite}++;
    }
}

printf "valgrind-check: %d log(s), %d error(s): %d in the module's code "
     . "(%d distinct), %d elsewhere (%d distinct)\n",
    scalar @logs, $records,
    sum(map { $_->{count} } values %module), scalar keys %module,
    sum(map { $_->{count} } values %other), scalar keys %other;

for my $sig (sort { $module{$b}{count} <=> $module{$a}{count} } keys %module) {
    my $e = $module{$sig};
    print "\n--- module error, seen $e->{count} time(s) in ",
          join(', ', sort keys %{ $e->{suites} }), ":\n$e->{text}\n";
}

if (%other) {
    print "\nnot the module's (nginx, libc; add to valgrind.suppress if noise):\n";
    for my $sig (sort keys %other) {
        my $e = $other{$sig};
        my @lines = split /\n/, $e->{text};
        my $end = $#lines < 8 ? $#lines : 8;
        print "  $e->{count}x in ", join(', ', sort keys %{ $e->{suites} }),
              ":\n", map { "    $_\n" } @lines[0 .. $end];
    }
}

exit(%module ? 1 : 0);

sub sum { my $s = 0; $s += $_ for @_; $s }
