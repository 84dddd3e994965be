# The pictures of `make bench-curve`: bench/curve.sh calls, per curve,
#   gnuplot -e "resultdir='bench/results'; curve='shards'" bench/curve.gp
# after bench/curve.pl wrote curve-CURVE.tsv (its rows by zone, then x),
# curve-CURVE.vars (title; zones: the series) and curve-plot.vars
# (subtitle) there.
#
# top: throughput of the module (one line per zone) and of plain nginx,
# each module point labelled with its ratio to plain; middle: Redis time
# and Redis CPU per check, with the mean batch size (callers: the rule
# lookups per request) on the right axis; bottom: p50 and p99.

datafile = resultdir . '/curve-' . curve . '.tsv'
load resultdir . '/curve-plot.vars'
load resultdir . '/curve-' . curve . '.vars'

# the columns of curve-CURVE.tsv (bench/curve.pl's @COLS)
c_x = 1; c_zone = 2; c_rps = 6; c_rps_min = 7; c_rps_max = 8
c_plain = 9; c_xplain = 10; c_p50 = 11; c_p99 = 12; c_plain_p50 = 13
c_plain_p99 = 14; c_redis = 17; c_cpu = 18; c_batch = 19; c_lookups = 21

set terminal pngcairo size 1200,1100 font 'Sans,10' noenhanced
set output resultdir . '/curve-' . curve . '.png'
set datafile separator "\t"
set datafile missing '-'

if (curve eq 'shards') { set xlabel 'Redis shards' }
if (curve eq 'policies') { set xlabel 'policies per request' }
if (curve eq 'callers') {
    set xlabel 'distinct callers (log scale)'
    set logscale x 10
}
if (curve eq 'concurrency') {
    set xlabel 'wrk connections (log scale)'
    set logscale x 2
}

# the x range: a margin either side of the points
stats datafile using c_x nooutput
if (curve eq 'callers' || curve eq 'concurrency') {
    set xrange [STATS_min / 1.6 : STATS_max * 1.6]
} else {
    set xrange [STATS_min - 0.5 : STATS_max + 0.5]
}
eval 'set xtics nomirror ' . xtics
set grid xtics ytics

# the same plot area in every panel, the keys right of it
set lmargin at screen 0.08
set rmargin at screen 0.68
set key at screen 0.76, graph 1 left top Left reverse

# a series per zone (several only in the callers curve): its rows only
nz = words(zones)
inzone(i) = strcol(c_zone) eq word(zones, i) ? column(c_x) : NaN
zt(s, i) = nz > 1 ? s . ', ' . word(zones, i) : s
colour(i) = i == 1 ? '#4477aa' : i == 2 ? '#ee6677' : i == 3 ? '#228833' \
            : '#aa3377'

set multiplot layout 3,1 title "make bench-curve: " . title . "\n" . subtitle

# --- throughput
stats datafile using c_rps_max nooutput
top_rps = STATS_max
stats datafile using c_plain nooutput
if (STATS_max > top_rps) { top_rps = STATS_max }
set ylabel 'requests per second'
set yrange [0 : top_rps * 1.2]
set title 'Throughput (median of the rounds; whiskers: min..max of the ' \
          . 'module); labels: x plain nginx'
plot datafile using (column(c_x)):(column(c_plain)) skip 1 \
        with linespoints lw 2 dt 2 pt 6 lc rgb '#888888' \
        title 'plain nginx, same rounds', \
     for [i = 1:nz] datafile using (inzone(i)):(column(c_rps)):\
        (column(c_rps_min)):(column(c_rps_max)) skip 1 \
        with yerrorlines lw 2 pt 7 lc rgb colour(i) title (nz > 1 ? 'module, zone ' . word(zones, i) : 'module'), \
     for [i = 1:nz] datafile using (inzone(i)):(column(c_rps)):\
        (sprintf('%.2fx', column(c_xplain))) skip 1 \
        with labels offset 0, (i == nz ? 1.3 : -1.3) font ',9' \
        tc rgb colour(i) notitle

# --- Redis per check
if (curve eq 'callers') {
    set title 'Redis per check, and rule lookups per request (right axis)'
    set y2label 'rule lookups per request'
    set y2range [0:1.05]
    c_right = c_lookups
    right = 'lookups/request (right)'
} else {
    set title 'Redis per check, and the mean batch size (right axis)'
    set y2label 'checks per script call (mean batch size)'
    set y2range [0:2<*]
    c_right = c_batch
    right = 'batch size (right)'
}
set ylabel 'microseconds per check'
set yrange [0:*]
set y2tics
set ytics nomirror
plot for [i = 1:nz] datafile using (inzone(i)):(column(c_redis)) skip 1 \
        with linespoints lw 2 pt 7 lc rgb colour(i) \
        title zt('Redis time, commandstats', i), \
     for [i = 1:nz] datafile using (inzone(i)):(column(c_cpu)) skip 1 \
        with linespoints lw 2 pt 5 dt 2 lc rgb colour(i) \
        title zt('Redis CPU, /proc', i), \
     for [i = 1:nz] datafile using (inzone(i)):(column(c_right)) skip 1 \
        axes x1y2 with linespoints lw 1 pt 9 dt 3 lc rgb colour(i) \
        title zt(right, i)
unset y2tics
unset y2label
set ytics mirror

# --- latency
set title 'Latency under the same load'
set ylabel 'ms (log scale)'
set logscale y
set yrange [*:*]
plot datafile using (column(c_x)):(column(c_plain_p50)) skip 1 \
        with linespoints dt 2 pt 6 lc rgb '#888888' title 'plain p50', \
     datafile using (column(c_x)):(column(c_plain_p99)) skip 1 \
        with linespoints dt 3 pt 4 lc rgb '#888888' title 'plain p99', \
     for [i = 1:nz] datafile using (inzone(i)):(column(c_p50)) skip 1 \
        with linespoints lw 2 pt 7 lc rgb colour(i) title zt('module p50', i), \
     for [i = 1:nz] datafile using (inzone(i)):(column(c_p99)) skip 1 \
        with linespoints lw 2 pt 5 dt 2 lc rgb colour(i) \
        title zt('module p99', i)

unset multiplot
