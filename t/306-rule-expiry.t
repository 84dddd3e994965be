# Rules that expire: a rule PUT with "expires_at" limits until then, and
# then every edge node is back on the default at the same moment, without
# a further call (the check script ignores it by the shard's clock, the
# nodes' rule caches keep it no longer).  Bad expiries are refused, naming
# the field, and change nothing.

use strict;
use warnings;

use JSON::PP;
use POSIX qw(strftime);
use Test::More;
use Time::HiRes qw(time sleep);

use lib 't/lib';
use RLTest qw(ratelimit_http unique_key);
use RLTest::Nginx;
use RLTest::Redis;

my $token = 'test-admin-token-0123456789';
my @redis = map { RLTest::Redis->start } 1 .. 2;

my $http = ratelimit_http(shards => [map { $_->port } @redis],
                          timeout => '500ms', body => <<"EOF");
    ratelimit_policy burst \$http_x_user_id limit=50 window=3600s;

    server {
        listen 127.0.0.1:%PORT%;

        location /api/ {
            ratelimit \$http_x_user_id;
            ratelimit_default 100 3600s;
            empty_gif;
        }

        location /b/ {
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
    my ($node, $method, $path, $body) = @_;
    my %h = (Authorization => "Bearer $token");
    if (defined $body) {
        $h{'Content-Type'} = 'application/json';
        $h{_body} = ref $body ? $json->encode($body) : $body;
    }
    my $r = $node->request($method, "/admin/limits$path", %h);
    $r->{json} = eval { decode_json($r->{content}) } if $r->{content};
    return $r;
}

sub hit {
    my ($node, $path, $user) = @_;
    return $node->get($path, 'X-User-Id' => $user)->{status};
}

sub rfc3339 { strftime('%Y-%m-%dT%H:%M:%SZ', gmtime $_[0]) }

# a rule of 1 per hour for 3 s, on two nodes; then the default of 100
{
    my $c = unique_key('exp');
    my $t0 = time;
    my $at = int($t0) + 5;
    my $r = admin($na, 'PUT', '', { customer_id => $c, limit => 1, window => 3600,
                                    expires_at => $at });
    is $r->{status}, 200, 'PUT with expires_at in epoch seconds: 200';
    is $r->{json}{expires_at}, rfc3339($at), '... echoed in RFC 3339 UTC';
    is admin($nb, 'GET', "/$c")->{json}{expires_at}, rfc3339($at), 'GET on the other node shows it';

    # past the polls that follow the change: what the nodes cache now stays
    sleep 0.8;

    is hit($na, '/api/x', $c), 200, 'the rule limits: the 1st passes';
    is hit($na, '/api/x', $c), 429, '... the 2nd is refused on this node';
    is hit($nb, '/api/x', $c), 429, '... and on the other (both cache the rule now)';
    ok time < $at - 0.3, sprintf('(all that %.2f s before the expiry)', $at - time);

    sleep($at - time + 0.3) if $at - time + 0.3 > 0;
    my @s = (hit($na, '/api/x', $c), hit($nb, '/api/x', $c));
    is_deeply \@s, [200, 200], sprintf('%.1f s after the first request, past the expiry: the default on both nodes, no admin call', time - $t0);
    is admin($na, 'GET', "/$c")->{status}, 404, 'GET of the expired rule: 404';
    like admin($na, 'GET', "/$c")->{json}{error}, qr/expired/, '... saying it expired';
    my $list = admin($na, 'GET', '?limit=1000')->{json}{rules};
    ok !(grep { $_->{customer_id} eq $c } @$list), 'the list leaves it out';
    my $d = admin($na, 'DELETE', "/$c");
    is_deeply [$d->{status}, $d->{json}{deleted}], [200, JSON::PP::false],
        'DELETE of it: 200, "deleted": false, as GET and the list say';
}

# an expired rule of a policy: the customer's rule for every policy again
{
    my $c = unique_key('pexp');
    my $t0 = time;
    my $at = int($t0) + 5;
    is admin($na, 'PUT', '', { customer_id => $c, limit => 2, window => 3600 })->{status}, 200,
        'a rule of 2 for every policy';
    my $r = admin($nb, 'PUT', '', { customer_id => $c, policy => 'burst', limit => 1,
                                    window => 3600, expires_at => rfc3339($at) =~ s/Z$/.000+00:00/r });
    is $r->{status}, 200, 'a rule of 1 for policy burst until an RFC 3339 time with an offset';
    is $r->{json}{expires_at}, rfc3339($at), '... echoed in UTC';
    sleep 0.8;
    is_deeply [map { hit($_, '/b/x', $c) } $na, $nb], [200, 429], 'the policy\'s rule limits: 1';
    sleep($at - time + 0.3) if $at - time + 0.3 > 0;
    is_deeply [map { hit($_, '/b/x', $c) } $nb, $na, $nb],
        [200, 429, 429], 'past its expiry: the customer\'s rule of 2 (1 used before), on both nodes';
}

# bad expiries: 400 naming expires_at, the rule unchanged
{
    my $c = unique_key('bad');
    is admin($na, 'PUT', '', { customer_id => $c, limit => 3, window => 60 })->{status}, 200, 'a rule';
    my $now = int(time);
    for my $case ([$now - 10, 'in the past'], [$now, 'now'], [rfc3339($now - 3600), 'an hour ago, RFC 3339'],
                  ['2030-02-30T00:00:00Z', 'February 30th'], ['2030-01-01T00:00:00', 'no offset'],
                  ['2030-01-01 00:00:00Z', 'a space for T'], ['tomorrow', 'a word'],
                  ['10000-01-01T00:00:00Z', 'year 10000'], [253402300800, 'past 9999 in epoch seconds'],
                  [0, 'zero'], [-1, 'negative'], ['1767225600', 'epoch seconds as a string'],
                  [JSON::PP::true, 'true']) {
        my ($v, $what) = @$case;
        my $r = admin($na, 'PUT', '', { customer_id => $c, limit => 9, window => 9, expires_at => $v });
        is $r->{status}, 400, "expires_at $what: 400";
        is $r->{json}{field}, 'expires_at', '... naming expires_at: ' . ($r->{json}{error} // '');
    }
    my $r = admin($na, 'PUT', '', qq({"customer_id":"$c","limit":9,"window":9,"expires_at":1.5e9}));
    is_deeply [$r->{status}, $r->{json}{field}], [400, 'expires_at'], 'expires_at 1.5e9: 400';
    my $g = admin($nb, 'GET', "/$c")->{json};
    is_deeply [@$g{qw(limit window)}, exists $g->{expires_at} ? 1 : 0], [3, 60, 0], 'the rule is unchanged';
    $r = admin($na, 'PUT', '', { customer_id => $c, limit => 4, window => 60, expires_at => undef });
    is_deeply [$r->{status}, exists $r->{json}{expires_at} ? 1 : 0], [200, 0], 'expires_at null: no expiry';
}

is_deeply [$na->crashes, $nb->crashes], [], 'no worker crashed';

$_->stop for $na, $nb;
$_->stop for @redis;

done_testing;
