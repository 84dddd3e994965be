# The admin endpoint's rules of one policy: "policy" in the PUT body,
# "?policy=" after the id of GET and DELETE.  A customer's rule for every
# policy and its rule for one policy are fields of their own in the rules
# hash ("<customer>", "<customer>\x1f<policy>"), put, read and deleted
# apart; a policy not declared by "ratelimit_policy", or a name no policy
# can have, is a 400 that changes nothing.
#
# Every request of a block is checked for its status, its body and the
# absence of alerts; after the blocks, what the shards hold is read back
# from both of them.  Ids are unique to this run.

use Test::Nginx::Socket;

use Digest::SHA qw(sha1_hex);
use Redis;

our $Run = "t303-$$-" . time();
our $Token = 'test-admin-token-0123456789';

# a PUT of the body given, and of the query if one is given
sub put { "PUT /admin/limits" . ($_[1] // '') . "\n$_[0]" }

# the admin location, with the policies every block but TEST 5 declares
add_block_preprocessor(sub {
    my ($block) = @_;

    if (!defined $block->http_config) {
        $block->set_value('http_config', <<'EOF');
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
    ratelimit_policy burst $remote_addr limit=10 window=1s;
    ratelimit_policy search.v2 $http_x_api_key limit=100 window=60s
                     algorithm=sliding_window;
EOF
    }

    if (!defined $block->config) {
        $block->set_value('config', <<'EOF');
    location /admin/limits {
        ratelimit_admin;
        ratelimit_admin_token test-admin-token-0123456789;
    }
EOF
    }

    if (!defined $block->more_headers) {
        $block->set_value('more_headers',
                          "Authorization: Bearer $Token\n"
                          . "Content-Type: application/json");
    }

    if (!defined $block->no_error_log) {
        $block->set_value('no_error_log', "[alert]\n");
    }
});

no_shuffle();
repeat_each(1);

# per request: status, body, and one no_error_log pattern
my @requests = (18, 23, 7, 3, 3);
my $sum = 0;
$sum += 3 * $_ for @requests;

# what the shards hold afterwards: 9 checks on each of the two
plan tests => repeat_each() * $sum + 2 * 9;

run_tests();


# The fields of the rules hash this run left, as each shard holds them.

my $sep = "\x1f";

for my $port ($ENV{TEST_NGINX_REDIS_PORT}, $ENV{TEST_NGINX_REDIS_PORT2}) {
    my $redis = Redis->new(server => "127.0.0.1:$port");
    my $on = "on the shard on port $port";

    like $redis->hget('rl:rules', "$Run-a"), qr/^\d+ 7 60 -$/,
        "the customer's rule for every policy is field \"<id>\", $on";
    like $redis->hget('rl:rules', "$Run-a${sep}burst"), qr/^\d+ -$/,
        "its deleted rule for burst is a tombstone in \"<id>\\x1fburst\", $on";
    like $redis->hget('rl:rules', "$Run-b${sep}burst"),
        qr/^\d+ 4 30 token_bucket$/,
        "a rule for burst outlives the deleted rule for every policy, $on";
    like $redis->hget('rl:rules', "$Run-b${sep}search.v2"),
        qr/^\d+ 3 60 sliding_window$/,
        "a second policy's rule of the same customer, $on";
    like $redis->hget('rl:rules', "$Run-q?x${sep}burst"), qr/^\d+ -$/,
        "an id with \"?\" in it, and its policy after the separator, $on";

    my @steady = sort grep { index($_, "$Run-steady") == 0 }
                      $redis->hkeys('rl:rules');
    is_deeply \@steady, ["$Run-steady", "$Run-steady${sep}burst"],
        "the refused requests left no field behind, $on";

    # TEST 5 had the first shard only: the write was undone there ("~-",
    # no rule, and later than the write); the second never heard of it
    if ($port == $ENV{TEST_NGINX_REDIS_PORT}) {
        like $redis->hget('rl:rules', "$Run-undo${sep}burst") // '(none)',
            qr/^\d+ ~-$/,
            "a policy rule a shard could not take was undone, $on";
    } else {
        is $redis->hget('rl:rules', "$Run-undo${sep}burst"), undef,
            "a policy rule sent to other shards is not here, $on";
    }

    ok $redis->ttl("rl:rules:undo:$Run-b${sep}search.v2") > 0,
       "a policy rule's undo record is kept under its field, $on";

    # the digest is the XOR of a SHA-1 prefix of every "field\nvalue"
    my %all = $redis->hgetall('rl:rules');
    my @digest = (0) x 4;
    for my $field (keys %all) {
        my $h = sha1_hex("$field\n$all{$field}");
        $digest[$_] ^= hex substr($h, 8 * $_, 8) for 0 .. 3;
    }
    is $redis->get('rl:rules:digest'),
        join('', map { sprintf '%08x', $_ } @digest),
        "the digest covers the policy fields too, $on";

    $redis->quit;
}


__DATA__

=== TEST 1: a policy's rule beside the customer's: each put, read and deleted alone
--- request eval
[main::put(qq({"customer_id": "$::Run-a", "policy": "burst", "limit": 5, "window": 60})),
 "GET /admin/limits/$::Run-a?policy=burst",
 "GET /admin/limits/$::Run-a",
 main::put(qq({"customer_id": "$::Run-a", "limit": 7, "window": 60})),
 "GET /admin/limits/$::Run-a",
 "GET /admin/limits/$::Run-a?policy=burst",
 "DELETE /admin/limits/$::Run-a?policy=burst",
 "GET /admin/limits/$::Run-a?policy=burst",
 "GET /admin/limits/$::Run-a",
 "DELETE /admin/limits/$::Run-a?policy=burst",
 main::put(qq({"customer_id": "$::Run-b", "policy": "burst", "limit": 4, "window": 30, "algorithm": "token_bucket"})),
 main::put(qq({"customer_id": "$::Run-b", "limit": 6, "window": 30})),
 "DELETE /admin/limits/$::Run-b",
 "GET /admin/limits/$::Run-b",
 "GET /admin/limits/$::Run-b?policy=burst",
 main::put(qq({"policy": "search.v2", "customer_id": "$::Run-b", "limit": 3, "window": 60, "algorithm": "sliding_window"})),
 "GET /admin/limits/$::Run-b?policy=search.v2",
 "HEAD /admin/limits/$::Run-b?policy=burst"]
--- error_code eval
[200, 200, 404, 200, 200, 200, 200, 404, 200, 200,
 200, 200, 200, 404, 200, 200, 200, 200]
--- response_body_like eval
[qr/^\{"customer_id":"\Q$::Run\E-a","policy":"burst","limit":5,"window":60\}$/,
 qr/^\{"customer_id":"\Q$::Run\E-a","policy":"burst","limit":5,"window":60\}$/,
 qr/^\{"error":"this customer has no rule: the location's default applies","field":"customer_id"\}$/,
 qr/^\{"customer_id":"\Q$::Run\E-a","limit":7,"window":60\}$/,
 qr/^\{"customer_id":"\Q$::Run\E-a","limit":7,"window":60\}$/,
 qr/^\{"customer_id":"\Q$::Run\E-a","policy":"burst","limit":5,"window":60\}$/,
 qr/^\{"customer_id":"\Q$::Run\E-a","policy":"burst","deleted":true\}$/,
 qr/^\{"error":"this customer has no rule for this policy: its rule for every policy applies, or else the policy's limit","field":"policy"\}$/,
 qr/^\{"customer_id":"\Q$::Run\E-a","limit":7,"window":60\}$/,
 qr/^\{"customer_id":"\Q$::Run\E-a","policy":"burst","deleted":false\}$/,
 qr/^\{"customer_id":"\Q$::Run\E-b","policy":"burst","limit":4,"window":30,"algorithm":"token_bucket"\}$/,
 qr/^\{"customer_id":"\Q$::Run\E-b","limit":6,"window":30\}$/,
 qr/^\{"customer_id":"\Q$::Run\E-b","deleted":true\}$/,
 qr/"field":"customer_id"/,
 qr/^\{"customer_id":"\Q$::Run\E-b","policy":"burst","limit":4,"window":30,"algorithm":"token_bucket"\}$/,
 qr/^\{"customer_id":"\Q$::Run\E-b","policy":"search.v2","limit":3,"window":60,"algorithm":"sliding_window"\}$/,
 qr/^\{"customer_id":"\Q$::Run\E-b","policy":"search.v2","limit":3,"window":60,"algorithm":"sliding_window"\}$/,
 qr/^$/]



=== TEST 2: an unknown policy or a bad name, in the body or the query: 400 naming it, nothing changed
--- request eval
[main::put(qq({"customer_id": "$::Run-steady", "limit": 7, "window": 60})),
 main::put(qq({"customer_id": "$::Run-steady", "policy": "burst", "limit": 8, "window": 60})),
 main::put(qq({"customer_id": "$::Run-steady", "policy": "nope", "limit": 1, "window": 60})),
 main::put(qq({"customer_id": "$::Run-steady", "policy": "Burst", "limit": 1, "window": 60})),
 main::put(qq({"customer_id": "$::Run-steady", "policy": "default", "limit": 1, "window": 60})),
 main::put(qq({"customer_id": "$::Run-steady", "policy": "a b", "limit": 1, "window": 60})),
 main::put(qq({"customer_id": "$::Run-steady", "policy": "", "limit": 1, "window": 60})),
 main::put(qq({"customer_id": "$::Run-steady", "policy": 5, "limit": 1, "window": 60})),
 main::put(qq({"customer_id": "$::Run-steady", "policy": "burst", "limit": 1, "window": 60}), "?policy=burst"),
 main::put(qq({"customer_id": "$::Run-steady", "limit": 1, "window": 60}), "?x=1"),
 "GET /admin/limits/$::Run-steady?policy=nope",
 "GET /admin/limits/$::Run-steady?policy=default",
 "GET /admin/limits/$::Run-steady?policy=",
 "GET /admin/limits/$::Run-steady?policy",
 "GET /admin/limits/$::Run-steady?policy=burst&policy=burst",
 "GET /admin/limits/$::Run-steady?x=1",
 "GET /admin/limits/$::Run-steady?policy=burst&a%01b",
 "DELETE /admin/limits/$::Run-steady?policy=nope",
 "DELETE /admin/limits/$::Run-steady?policy=a%00b",
 "DELETE /admin/limits/$::Run-steady?policy=burst&x=1",
 "DELETE /admin/limits/$::Run-steady?x",
 "GET /admin/limits/$::Run-steady",
 "GET /admin/limits/$::Run-steady?policy=burst"]
--- error_code eval
[200, 200, (400) x 19, 200, 200]
--- response_body_like eval
[qr/"limit":7/,
 qr/"policy":"burst","limit":8/,
 qr/^\{"error":"unknown policy \\"nope\\": no \\"ratelimit_policy\\" of that name in this nginx's http block","field":"policy"\}$/,
 qr/^\{"error":"unknown policy \\"Burst\\": .*","field":"policy"\}$/,
 qr/^\{"error":"policy \\"default\\" is reserved for the unnamed policy of each location","field":"policy"\}$/,
 qr/^\{"error":"policy must be letters, digits, .* \(byte 0x20 at offset 1\)","field":"policy"\}$/,
 qr/^\{"error":"policy must be a name of 1 to 64 characters, not 0","field":"policy"\}$/,
 qr/^\{"error":"policy must be a name of 1 to 64 characters, not a number","field":"policy"\}$/,
 qr/^\{"error":"PUT takes the policy in the body, not in the query","field":"policy"\}$/,
 qr/^\{"error":"unknown argument \\"x\\" \(PUT takes none\)","field":"x"\}$/,
 qr/^\{"error":"unknown policy \\"nope\\": .*","field":"policy"\}$/,
 qr/^\{"error":"policy \\"default\\" is reserved.*","field":"policy"\}$/,
 qr/^\{"error":"policy must be a name of 1 to 64 characters, not 0","field":"policy"\}$/,
 qr/^\{"error":"policy must be a name of 1 to 64 characters, not 0","field":"policy"\}$/,
 qr/^\{"error":"argument \\"policy\\" is given more than once","field":"policy"\}$/,
 qr/^\{"error":"unknown argument \\"x\\" \(expected \\"policy\\"\)","field":"x"\}$/,
 qr/^\{"error":"unknown argument \\"a\?b\\" \(expected \\"policy\\"\)","field":"a\?b"\}$/,
 qr/^\{"error":"unknown policy \\"nope\\": .*","field":"policy"\}$/,
 qr/^\{"error":"policy must be letters, digits, .* \(byte 0x00 at offset 1\)","field":"policy"\}$/,
 qr/^\{"error":"unknown argument \\"x\\" \(expected \\"policy\\"\)","field":"x"\}$/,
 qr/^\{"error":"unknown argument \\"x\\" \(expected \\"policy\\"\)","field":"x"\}$/,
 qr/^\{"customer_id":"\Q$::Run\E-steady","limit":7,"window":60\}$/,
 qr/^\{"customer_id":"\Q$::Run\E-steady","policy":"burst","limit":8,"window":60\}$/]



=== TEST 3: "?" ends the id and starts the query; an encoded "%3F" stays in the id
--- request eval
[main::put(qq({"customer_id": "$::Run-q?x", "policy": "burst", "limit": 9, "window": 60})),
 "GET /admin/limits/$::Run-q%3Fx?policy=burst",
 "GET /admin/limits/$::Run-q%3Fx",
 "GET /admin/limits/$::Run-q%3fx?&policy=bur%73t&",
 "GET /admin/limits/$::Run-q%3Fx?pol%69cy=burst",
 "GET /admin/limits/$::Run-q?x&policy=burst",
 "DELETE /admin/limits/$::Run-q%3Fx?policy=burst"]
--- error_code eval
[200, 200, 404, 200, 200, 400, 200]
--- response_body_like eval
[qr/^\{"customer_id":"\Q$::Run\E-q\?x","policy":"burst","limit":9,"window":60\}$/,
 qr/^\{"customer_id":"\Q$::Run\E-q\?x","policy":"burst","limit":9,"window":60\}$/,
 qr/"field":"customer_id"/,
 qr/^\{"customer_id":"\Q$::Run\E-q\?x","policy":"burst","limit":9,"window":60\}$/,
 qr/^\{"customer_id":"\Q$::Run\E-q\?x","policy":"burst","limit":9,"window":60\}$/,
 qr/^\{"error":"unknown argument \\"x\\" \(expected \\"policy\\"\)","field":"x"\}$/,
 qr/^\{"customer_id":"\Q$::Run\E-q\?x","policy":"burst","deleted":true\}$/]



=== TEST 4: after a rewrite, the query carried over names the policy
--- config
    location /v1/limits/ {
        rewrite ^/v1/limits/(.*)$ /admin/limits/$1 last;
    }
    location /admin/limits {
        ratelimit_admin;
        ratelimit_admin_token test-admin-token-0123456789;
    }
--- request eval
[main::put(qq({"customer_id": "$::Run-rw", "policy": "burst", "limit": 2, "window": 60})),
 "GET /v1/limits/$::Run-rw?policy=burst",
 "GET /v1/limits/$::Run-rw"]
--- error_code eval
[200, 200, 404]
--- response_body_like eval
[qr/"policy":"burst","limit":2/,
 qr/^\{"customer_id":"\Q$::Run\E-rw","policy":"burst","limit":2,"window":60\}$/,
 qr/"field":"customer_id"/]



=== TEST 5: a policy's rule a shard cannot take is undone on the other: 503
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_DEAD_PORT;
    ratelimit_policy burst $remote_addr limit=10 window=1s;
--- request eval
[main::put(qq({"customer_id": "$::Run-undo", "policy": "burst", "limit": 2, "window": 60})),
 main::put(qq({"customer_id": "$::Run-undo", "policy": "burst", "limit": 2, "window": 60})),
 "GET /admin/limits/$::Run-undo?policy=burst"]
--- error_code eval
[503, 503, 404]
--- response_body_like eval
[qr/the rule was not changed/,
 qr/the rule was not changed/,
 qr/"field":"policy"/]
