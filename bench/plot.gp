# The picture of `make bench`: bench/run.sh calls
#   gnuplot -e "resultdir='bench/results'" bench/plot.gp
# after bench/report.pl wrote plot.dat and plot.vars there.
#
# top: throughput per scenario (median, with the min..max of the rounds),
# labelled with its ratio to plain nginx; bottom: latency percentiles under
# the same load, on a log scale.

datafile = resultdir . '/plot.dat'
load resultdir . '/plot.vars'

set terminal pngcairo size 1100,900 font 'Sans,10' noenhanced
set output resultdir . '/bench.png'

set multiplot layout 2,1 title "make bench: global rate limiter\n" . subtitle

set style fill solid 0.8 border -1
set grid ytics
unset key
set xrange [0.4:nscenarios + 0.6]
set xtics nomirror
set boxwidth 0.6

# room above the highest bar for its label
stats datafile using 5 nooutput
set ylabel 'requests per second'
set yrange [0:STATS_max * 1.25]
set title 'Throughput (median of the rounds; whiskers: min..max)'
plot datafile using 1:3:xtic(2) with boxes lc rgb '#4477aa' title 'req/s', \
     '' using 1:3:4:5 with yerrorbars lc rgb 'black' pt 0 ps 0 notitle, \
     '' using 1:5:(sprintf('%.0f req/s\n%sx plain', $3, strcol(6))) \
        with labels offset 0,1.5 notitle

set ylabel 'latency, ms (log scale)'
set logscale y
set key top left horizontal
# room above the highest bar for the key
stats datafile using 9 nooutput
set title 'Latency percentiles under the same load (median of the rounds)'
set boxwidth 0.22
set yrange [0.05:STATS_max * 5]
plot datafile using ($1-0.25):7 with boxes lc rgb '#66ccee' title 'p50', \
     '' using 1:8:xtic(2) with boxes lc rgb '#ccbb44' title 'p99', \
     '' using ($1+0.25):9 with boxes lc rgb '#ee6677' title 'p99.9', \
     '' using ($1-0.25):7:(sprintf('%.2f', $7)) with labels offset 0,0.7 \
        font ',8' notitle, \
     '' using 1:8:(sprintf('%.2f', $8)) with labels offset 0,0.7 \
        font ',8' notitle, \
     '' using ($1+0.25):9:(sprintf('%.2f', $9)) with labels offset 0,0.7 \
        font ',8' notitle

unset multiplot
