# The admin endpoint's list: GET <location> pages through the rules in
# force in byte order of their fields, with a cursor, on two edge nodes
# sharing two shards.

use strict;
use warnings;

use JSON::PP;
use Test::More;

use lib 't/lib';
use RLTest qw(ratelimit_http);
use RLTest::Nginx;
use RLTest::Redis;

my $token = 'test-admin-token-0123456789';
my @redis = map { RLTest::Redis->start } 1 .. 2;

my $http = ratelimit_http(shards => [map { $_->port } @redis],
                          timeout => '500ms', body => <<"EOF");
    ratelimit_policy burst \$remote_addr limit=10 window=1s;

    server {
        listen 127.0.0.1:%PORT%;

        location /admin/limits {
            ratelimit_admin;
            ratelimit_admin_token $token;
        }
    }
EOF

my $a = RLTest::Nginx->start(workers => 2, http => $http);
my $b = RLTest::Nginx->start(workers => 2, http => $http);

my $json = JSON::PP->new->canonical;

sub admin {
    my ($node, $method, $path, $body, %h) = @_;
    $h{Authorization} = "Bearer $token" unless exists $h{Authorization};
    delete $h{Authorization} unless defined $h{Authorization};
    if (defined $body) {
        $h{'Content-Type'} = 'application/json';
        $h{_body} = $json->encode($body);
    }
    my $r = $node->request($method, "/admin/limits$path", %h);
    $r->{json} = eval { decode_json($r->{content}) } if $r->{content};
    return $r;
}

# Every rule of the list, following next_cursor with pages of $size;
# between pages, $between->($page_number) may change the rules.
sub list_all {
    my ($node, $size, $between) = @_;
    my (@rules, @pages);
    my $cursor;
    for my $n (1 .. 1000) {
        my $q = "?limit=$size" . (defined $cursor ? "&cursor=$cursor" : '');
        my $r = admin($node, 'GET', $q);
        die "list: $r->{status} $r->{content}" unless $r->{status} == 200;
        push @pages, scalar @{ $r->{json}{rules} };
        push @rules, @{ $r->{json}{rules} };
        $cursor = $r->{json}{next_cursor};
        last unless defined $cursor;
        $between->($n) if $between;
    }
    return (\@rules, \@pages);
}

sub name_of {
    my ($rule) = @_;
    return $rule->{customer_id} . (defined $rule->{policy} ? "\x1f$rule->{policy}" : '');
}

# 37 customers, 5 of them with a rule of the policy too, one deleted
my @ids = map { sprintf 'cust-%02d', $_ } 1 .. 37;
for my $id (@ids) {
    my $r = admin($a, 'PUT', '', { customer_id => $id, limit => 5, window => 60 });
    die "PUT $id: $r->{status} $r->{content}" unless $r->{status} == 200;
}
for my $id (@ids[0 .. 4]) {
    my $r = admin($b, 'PUT', '', { customer_id => $id, policy => 'burst',
                                   limit => 7, window => 1, algorithm => 'sliding_window',
                                   expires_at => '2999-01-01T00:00:00Z' });
    die "PUT $id/burst: $r->{status} $r->{content}" unless $r->{status} == 200;
}
is admin($a, 'DELETE', '/cust-10')->{status}, 200, 'a rule deleted (a tombstone stays)';

my @want = sort +((grep { $_ ne 'cust-10' } @ids),
                               map { "$_\x1fburst" } @ids[0 .. 4]);

{
    my ($rules, $pages) = list_all($a, 1000);
    is_deeply [map { name_of($_) } @$rules], \@want,
        'one page of 1000: every rule, in byte order, the tombstone left out';
    is_deeply $pages, [scalar @want], '... in one page, next_cursor null';
    my ($burst) = grep { name_of($_) eq "cust-01\x1fburst" } @$rules;
    is_deeply $burst, { customer_id => 'cust-01', policy => 'burst', limit => 7, window => 1,
                        algorithm => 'sliding_window', expires_at => '2999-01-01T00:00:00Z' },
        'a rule of a policy, as listed';
    my ($plain) = grep { name_of($_) eq 'cust-20' } @$rules;
    is_deeply $plain, { customer_id => 'cust-20', limit => 5, window => 60 },
        'a rule for every policy, as listed';
}

for my $size (1, 3, 7, 41) {
    my ($rules, $pages) = list_all($b, $size);
    is_deeply [map { name_of($_) } @$rules], \@want,
        "pages of $size on the other node: each rule exactly once, in order";
    ok !(grep { $_ > $size } @$pages), "... no page over $size";
}

{
    my $r = admin($a, 'GET', '');
    is scalar @{ $r->{json}{rules} }, scalar @want, 'no limit: pages of 100';
    ok exists $r->{json}{next_cursor} && !defined $r->{json}{next_cursor},
        '... next_cursor null at the end';
}

# rules added and deleted while paging: those before the cursor are not
# seen, those after are; every rule that stays is listed once, in order
{
    my @added;
    my ($rules) = list_all($a, 4, sub {
        my ($n) = @_;
        return unless $n <= 6;
        for my $id ("cust-00-$n", "cust-99-$n", sprintf('cust-%02d-x', 6 * $n)) {
            admin($b, 'PUT', '', { customer_id => $id, limit => 1, window => 1 })->{status} == 200
                or die "PUT $id";
            push @added, $id;
        }
    });
    my @names = map { name_of($_) } @$rules;
    my %seen;
    $seen{$_}++ for @names;
    is_deeply [grep { $seen{$_} > 1 } sort keys %seen], [], 'listed while rules are added: none twice';
    is_deeply \@names, [sort @names], '... in byte order';
    is_deeply [grep { !$seen{$_} } @want], [], '... every rule there before is listed';
    ok((grep { $_ eq 'cust-99-1' } @names), '... a rule added ahead of the cursor is listed');
    ok(!(grep { $_ eq 'cust-00-2' } @names), '... one added behind it is not');
    admin($a, 'DELETE', "/$_") for @added;
}

# the index is made again when missing (rules stored by an older module)
{
    $_->cli('DEL', 'rl:rules:index') for @redis;
    my ($rules) = list_all($a, 5);
    is_deeply [map { name_of($_) } @$rules], \@want, 'index lost on both shards: rebuilt, same list';
    like $redis[0]->cli('ZCARD', 'rl:rules:index'), qr/\d+/, '... the index is back';
}

# a large index is made again in steps (rules_list.lua): no call holds the
# shard for long, and the list answers 503 with Retry-After meanwhile
{
    my $n = 60000;
    my $fill = "for i = 1, $n do redis.call('HSET', KEYS[1], "
             . "string.format('zz-bulk-%06d', i), '1 5 60 token_bucket') end";
    for (@redis) {
        $_->cli('EVAL', $fill, 1, 'rl:rules');
        $_->cli('DEL', 'rl:rules:index');
        $_->cli('CONFIG', 'SET', 'latency-monitor-threshold', 1);
        $_->cli('LATENCY', 'RESET');
    }
    my ($building, $retry_after, $message) = (0, '', '');
    my $r;
    for (1 .. 400) {
        $r = admin($a, 'GET', '?limit=3');
        last unless $r->{status} == 503;
        $building++;
        $retry_after = $r->{headers}{'retry-after'} // '';
        $message = $r->{json}{error} // '';
    }
    is $r->{status}, 200, "$n rules without an index: listed once it is made again";
    cmp_ok $building, '>', 1, "... after $building answers of 503";
    is $retry_after, '1', '... with Retry-After: 1';
    like $message, qr/making its index of the rules again \(\d+ of \d+ fields\)/,
        "... saying why: $message";
    is_deeply [map { name_of($_) } @{ $r->{json}{rules} }], [@want[0 .. 2]],
        '... the first page as before';

    # the longest command either shard ran meanwhile (latency monitor, ms):
    # the index in one go took some 100 ms here, past a 50 ms check timeout
    my $worst = 0;
    for (@redis) {
        my %max = $_->cli('LATENCY', 'LATEST') =~ /^\d+\) 1\) "(\w[\w-]*)"\n.*?\n.*?\n\s*4\) \(integer\) (\d+)/mg;
        $worst = $max{command} if ($max{command} // 0) > $worst;
        $_->cli('CONFIG', 'SET', 'latency-monitor-threshold', 0);
    }
    cmp_ok $worst, '<', 40, "no command held a shard for 40 ms (the longest: $worst ms)";

    my $drop = "for i = 1, $n do local f = string.format('zz-bulk-%06d', i) "
             . "redis.call('HDEL', KEYS[1], f) redis.call('ZREM', KEYS[1] .. ':index', f) end";
    $_->cli('EVAL', $drop, 1, 'rl:rules') for @redis;
}

# one shard down: the list comes from the other
{
    $redis[0]->stop;
    my ($rules) = list_all($a, 10);
    is_deeply [map { name_of($_) } @$rules], \@want, 'a shard down: the other answers the list';
    $redis[0]->restart;
}

# bad arguments: 400 naming the argument, nothing listed
for my $case (['?limit=0', 'limit'], ['?limit=1001', 'limit'], ['?limit=abc', 'limit'],
              ['?limit=', 'limit'], ['?limit=-5', 'limit'], ['?limit=5&limit=6', 'limit'],
              ['?cursor=zz', 'cursor'], ['?cursor=abc', 'cursor'],
              ['?cursor=' . ('61' x 400), 'cursor'], ['?page=2', 'page'],
              ['?policy=burst', 'policy']) {
    my ($q, $field) = @$case;
    my $r = admin($a, 'GET', $q);
    is $r->{status}, 400, "GET $q: 400";
    is $r->{json}{field}, $field, "... naming $field: $r->{json}{error}";
}

{
    my $r = admin($a, 'GET', '', undef, Authorization => undef);
    is $r->{status}, 401, 'no token: 401';
    $r = admin($a, 'GET', '', undef, Authorization => 'Bearer wrong-token-0123456789');
    is $r->{status}, 401, 'a wrong token: 401';
    $r = admin($a, 'POST', '');
    is $r->{status}, 405, 'POST to the collection: 405';
    is $r->{headers}{allow}, 'GET, HEAD, PUT', '... Allow: GET, HEAD, PUT';
}

is_deeply [$a->crashes, $b->crashes], [], 'no worker crashed';

$_->stop for $a, $b;
$_->stop for @redis;

done_testing;
