package Figures;

# What bench/report.pl (make bench) and bench/curve.pl (make bench-curve)
# both need: reading the runs' files, medians, ratios and formats.

use strict;
use warnings;

use Exporter 'import';

our @EXPORT_OK = qw(median ratio fmt redis_usec read_meta read_tsv);

sub median {
    my @v = sort { $a <=> $b } grep { defined && $_ ne '-' } @_;
    return undef unless @v;
    my $m = int(@v / 2);
    return @v % 2 ? $v[$m] : ($v[$m - 1] + $v[$m]) / 2;
}

sub ratio {
    my ($a, $b) = @_;
    return undef if !defined $a || !defined $b || $a eq '-' || $b eq '-'
                    || $b == 0;
    return $a / $b;
}

sub fmt {
    my ($fmt, $v) = @_;
    return defined $v ? sprintf($fmt, $v) : '-';
}

# the module's Redis time per check: its script calls and its rule lookups
# (bench.pl says why these), from the shards' INFO commandstats
sub redis_usec {
    my ($row) = @_;
    return undef if $row->{evalsha_usec} eq '-';
    return $row->{evalsha_usec} + $row->{eval_usec} + $row->{lookup_usec};
}

sub read_meta {
    my ($file) = @_;
    open my $fh, '<', $file or die "$file: $!\n";
    my %m;
    while (<$fh>) {
        chomp;
        $m{$1} = $2 if /^(\w+)=(.*)$/;
    }
    return %m;
}

sub read_tsv {
    my ($file) = @_;
    open my $fh, '<', $file or die "$file: $!\n";
    chomp(my $head = <$fh> // '');
    my @cols = split /\t/, $head;
    my @out;
    while (<$fh>) {
        chomp;
        my %row;
        @row{@cols} = split /\t/;
        push @out, \%row;
    }
    return @out;
}

1;
