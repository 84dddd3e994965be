# The admin endpoint's usage: GET <location>/usage?policy=&key= reads a
# caller's count from its shard without taking anything; DELETE resets it
# so that the caller has its whole quota back on every edge node.  Both
# need the token and are logged with the client's address.

use strict;
use warnings;

use IO::Socket::INET;
use JSON::PP;
use Test::More;
use Time::HiRes qw(sleep);

use lib 't/lib';
use RLTest qw(ratelimit_http unique_key);
use RLTest::Nginx;
use RLTest::Redis;

my $token = 'test-admin-token-0123456789';
my @redis = map { RLTest::Redis->start } 1 .. 2;

my $http = ratelimit_http(shards => [map { $_->port } @redis],
                          timeout => '500ms', body => <<"EOF");
    ratelimit_policy burst \$http_x_user_id \$remote_addr limit=5 window=3600s;

    server {
        listen 127.0.0.1:%PORT%;

        location /api/ {
            ratelimit burst;
            empty_gif;
        }

        location /admin/limits {
            ratelimit_admin;
            ratelimit_admin_token $token;
        }
    }
EOF

my $na = RLTest::Nginx->start(workers => 2, http => $http);
my $nb = RLTest::Nginx->start(workers => 2, http => $http);

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

sub hit {
    my ($node, $user) = @_;
    return $node->get('/api/x', defined $user ? ('X-User-Id' => $user) : ())->{status};
}

sub usage {
    my ($node, $q, $method) = @_;
    return admin($node, $method || 'GET', "/usage?$q");
}

my $u1 = unique_key('u1');

# a count that moves with traffic, and not with reading it
{
    hit($na, $u1) for 1 .. 2;
    hit($nb, $u1);
    my $r = usage($na, "policy=burst&key=$u1");
    is $r->{status}, 200, 'usage: 200';
    my $u = $r->{json};
    is_deeply [@$u{qw(policy source key customer limit window algorithm used remaining)}],
        ['burst', 'http_x_user_id', $u1, $u1, 5, 3600, 'token_bucket', 3, 2],
        'after 3 requests over two nodes: 3 of 5 used, 2 remaining';
    ok !$u->{rule}, '... under the policy\'s own limit (no rule)';
    is $u->{redis_key}, "rl:tb:\@burst:http_x_user_id:k:$u1", '... the key the check uses';
    my ($shard) = grep { $_->port == ($u->{shard} =~ /:(\d+)$/)[0] } @redis;
    ok $shard && $shard->cli('EXISTS', $u->{redis_key}) =~ /1/, '... on the shard it names';
    cmp_ok $u->{reset}, '>', 0, "... full again in $u->{reset} s";
    is $u->{retry_after}, 0, '... nothing to wait for';
    for (1 .. 3) {
        is usage($nb, "policy=burst&key=$u1")->{json}{used}, 3, "read again ($_): still 3, reading takes nothing";
    }
    hit($na, $u1);
    is usage($nb, "policy=burst&key=$u1")->{json}{used}, 4, 'one more request: 4';
}

# the caller over its limit, then reset: the whole quota back on both nodes
{
    my @s = map { hit($_ % 2 ? $na : $nb, $u1) } 1 .. 3;
    is_deeply \@s, [200, 429, 429], 'the 5th passes, then 429';
    is hit($nb, $u1), 429, '... on the other node too (its deny cache knows)';
    my $u = usage($na, "policy=burst&key=$u1")->{json};
    is_deeply [@$u{qw(used remaining)}], [5, 0], 'usage: 5 of 5 used, none left';
    cmp_ok $u->{retry_after}, '>=', 1, "... retry after $u->{retry_after} s";

    my $mark = $na->log_size;
    my $r = usage($na, "policy=burst&key=$u1", 'DELETE');
    is $r->{status}, 200, 'DELETE usage: 200';
    is_deeply [@{ $r->{json} }{qw(policy source key reset)}], ['burst', 'http_x_user_id', $u1, JSON::PP::true],
        '... the caller\'s count reset';
    is usage($na, "policy=burst&key=$u1")->{json}{used}, 0, 'usage after the reset: 0 used';
    is hit($na, $u1), 200, 'the caller passes again at once on the node that reset';
    sleep 0.6;
    is hit($nb, $u1), 200, '... and on the other node (its cached denial dropped)';
    my @s2 = map { hit($na, $u1) } 1 .. 4;
    is_deeply \@s2, [200, 200, 200, 429], '... with its whole quota: 5 in all, then 429';
    my $log = $na->error_log_since($mark);
    like $log, qr/\[notice\].*admin reset the count of key "\Q$u1\E" \(http_x_user_id\) under policy "burst".*client: 127\.0\.0\.1/,
        'the reset is logged at notice with the client address';
    like $log, qr/\[notice\].*admin read the usage of key "\Q$u1\E" \(http_x_user_id\) under policy "burst": 0 of 5 used.*client: 127\.0\.0\.1/,
        'the read is logged at notice with the client address';
}

# which of the policy's keys: source=
{
    my $r = usage($na, 'policy=burst&key=127.0.0.1&source=remote_addr');
    my $before = $r->{json}{used};
    hit($na);
    hit($nb);
    $r = usage($nb, 'policy=burst&key=127.0.0.1&source=remote_addr');
    is $r->{json}{used}, $before + 2, 'source=remote_addr: requests without a user id count there';
    is $r->{json}{redis_key}, 'rl:tb:@burst:remote_addr:k:127.0.0.1', '... under that key';
    usage($na, 'policy=burst&key=127.0.0.1&source=remote_addr', 'DELETE');
}

# a customer's rule in force: its limit, window and algorithm (another key)
{
    my $u2 = unique_key('u2');
    is admin($na, 'PUT', '', { customer_id => $u2, policy => 'burst', limit => 2,
                               window => 60, algorithm => 'sliding_window' })->{status},
        200, 'a rule of 2 per 60 s, sliding window, for a customer';
    hit($nb, $u2);
    my $u = usage($na, "policy=burst&key=$u2")->{json};
    is_deeply [@$u{qw(limit window algorithm used remaining)}], [2, 60, 'sliding_window', 1, 1],
        'usage under the rule: 1 of 2, sliding window';
    ok $u->{rule}, '... a rule applies';
    is $u->{redis_key}, "rl:sw:\@burst:http_x_user_id:k:$u2", '... the sliding window\'s key';
    $u = usage($na, "policy=burst&key=$u2&customer=someone-else")->{json};
    is_deeply [@$u{qw(limit algorithm used customer)}], [5, 'token_bucket', 0, 'someone-else'],
        'customer= another id without a rule: the policy\'s limit (its token bucket key is empty)';
    is hit($na, $u2), 200, 'the second request passes';
    is hit($na, $u2), 429, 'the third is refused';
    is usage($na, "policy=burst&key=$u2", 'DELETE')->{status}, 200, 'reset';
    is hit($na, $u2), 200, 'and it passes again';
}

# caller bytes in the log are escaped
{
    my $mark = $na->log_size;
    my $r = usage($na, 'policy=burst&key=a%22b%0Ac%5C');
    is $r->{status}, 200, 'a key with a quote, a newline and a backslash: 200';
    is $r->{json}{key}, "a\"b\nc\\", '... the key as given';
    like $na->error_log_since($mark), qr/usage of key "a\\x22b\\x0Ac\\x5C"/, '... escaped in the log';
}

# a key that is not UTF-8 cannot go into a JSON string: its bytes go in hex
{
    my $r = usage($na, 'policy=burst&key=ab%FFc');
    is $r->{status}, 200, 'a key with a byte that is not UTF-8: 200';
    ok $r->{json}, '... the answer is valid JSON (UTF-8)';
    is $r->{json}{key_hex}, '6162ff63', '... the key as hex';
    ok !exists $r->{json}{key}, '... and not as a string';
    like $r->{json}{redis_key_hex} // '', qr/6162ff63\z/, '... the Redis key too';
    my $d = usage($na, 'policy=burst&key=ab%FFc', 'DELETE');
    is $d->{status}, 200, 'its reset: 200';
    is $d->{json} && $d->{json}{key_hex}, '6162ff63', '... valid JSON, the key as hex';
}

# both need the token
for my $method (qw(GET DELETE)) {
    my $r = admin($na, $method, "/usage?policy=burst&key=$u1", undef, Authorization => undef);
    is $r->{status}, 401, "$method usage without a token: 401";
    $r = admin($na, $method, "/usage?policy=burst&key=$u1", undef,
               Authorization => 'Bearer not-the-token-0123456789');
    is $r->{status}, 401, "$method usage with a wrong token: 401";
}
{
    hit($na, $u1);
    my $used = usage($na, "policy=burst&key=$u1")->{json}{used};
    admin($na, 'DELETE', "/usage?policy=burst&key=$u1", undef, Authorization => undef);
    is usage($na, "policy=burst&key=$u1")->{json}{used}, $used, '... and a refused reset reset nothing';
}

# bad input: 400 naming the field
for my $case (['key=x', 'policy', 'GET'], ['policy=nope&key=x', 'policy', 'GET'],
              ['policy=default&key=x', 'policy', 'GET'], ['policy=bad%20name&key=x', 'policy', 'GET'],
              ['policy=burst', 'key', 'GET'], ['policy=burst&key=', 'key', 'GET'],
              ['policy=burst&key=' . ('k' x 4097), 'key', 'GET'],
              ['policy=burst&key=x&source=http_x_api_key', 'source', 'GET'],
              ['policy=burst&key=x&customer=', 'customer', 'GET'],
              ['policy=burst&key=x&customer=c', 'customer', 'DELETE'],
              ['policy=burst&key=x&key=y', 'key', 'DELETE'],
              ['policy=burst&key=x&limit=3', 'limit', 'GET'],
              ['', 'policy', 'DELETE']) {
    my ($q, $field, $method) = @$case;
    my $r = usage($na, $q, $method);
    my $shown = length $q > 60 ? substr($q, 0, 60) . '...' : $q;
    is $r->{status}, 400, "$method usage?$shown: 400";
    is $r->{json}{field}, $field, "... naming $field: " . ($r->{json}{error} // '');
}
like usage($na, 'policy=burst&key=x&source=nope')->{json}{error},
    qr/one of the keys of policy "burst": http_x_user_id, remote_addr/, 'a bad source: the keys are named';
{
    my $r = admin($na, 'PUT', '/usage', { customer_id => 'x', limit => 1, window => 1 });
    is $r->{status}, 405, 'PUT usage: 405';
    is $r->{headers}{allow}, 'GET, HEAD, DELETE', '... Allow: GET, HEAD, DELETE';
}

# a customer whose id is "usage" is reached as /%75sage
{
    is admin($na, 'PUT', '', { customer_id => 'usage', limit => 9, window => 9 })->{status}, 200,
        'PUT of customer "usage"';
    my $r = admin($na, 'GET', '/%75sage');
    is_deeply [$r->{status}, $r->{json}{customer_id}, $r->{json}{limit}], [200, 'usage', 9],
        'GET /%75sage: its rule';
    is admin($na, 'DELETE', '/%75sage')->{status}, 200, 'DELETE /%75sage';
}

# the caller's shard down: 503, no crash
{
    my $u = usage($na, "policy=burst&key=$u1")->{json};
    my ($shard) = grep { $_->port == ($u->{shard} =~ /:(\d+)$/)[0] } @redis;
    $shard->stop;
    my $r = usage($na, "policy=burst&key=$u1");
    is $r->{status}, 503, 'the caller\'s shard down: 503';
    $r = usage($na, "policy=burst&key=$u1", 'DELETE');
    is $r->{status}, 503, '... and a reset too: 503';
    $shard->restart;
}

# the caller's shard stalls: clients that leave before the answer, and one
# that waits, which gets 503 within the timeout; then the shard wakes
{
    # the shard restarted above is taken back at its next probe
    my $u;
    for (1 .. 40) {
        $u = usage($na, "policy=burst&key=$u1")->{json};
        last if $u && $u->{shard};
        sleep 0.1;
    }
    my ($shard) = grep { $_->port == ($u->{shard} =~ /:(\d+)$/)[0] } @redis;
    kill 'STOP', $shard->pid;
    my @left;
    for my $method (qw(GET DELETE GET DELETE)) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $na->port) or die $!;
        print $s "$method /admin/limits/usage?policy=burst&key=$u1 HTTP/1.1\r\n"
            . "Host: x\r\nAuthorization: Bearer $token\r\n\r\n";
        push @left, $s;
    }
    sleep 0.1;
    close $_ for @left;
    my $t0 = Time::HiRes::time();
    my $r = usage($na, "policy=burst&key=$u1");
    my $took = Time::HiRes::time() - $t0;
    is $r->{status}, 503, sprintf 'a read that waits on a stalled shard: 503 '
        . '(%.2f s)', $took;
    cmp_ok $took, '<', 3, '... within the timeout, not when the shard wakes';
    kill 'CONT', $shard->pid;
    my $ok = 0;
    for (1 .. 40) {
        $r = usage($na, "policy=burst&key=$u1");
        last if $ok = $r->{status} == 200;
        sleep 0.1;
    }
    ok $ok, 'once the shard woke, reads are answered again';
}

is_deeply [$na->crashes, $nb->crashes], [], 'no worker crashed';

$_->stop for $na, $nb;
$_->stop for @redis;

done_testing;
