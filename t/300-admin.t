# Runtime limits: the admin endpoint on two edge nodes sharing two shards.

use strict;
use warnings;

use File::Temp ();
use JSON::PP;
use Test::More;
use Time::HiRes qw(time sleep);

use lib 't/lib';
use RLTest qw(unique_key ratelimit_http redis_has_key);
use RLTest::Nginx;
use RLTest::Redis;

my $token = 'test-admin-token-0123456789';
my @redis = map { RLTest::Redis->start } 1 .. 2;

sub server_block {
    return <<"EOF";
    server {
        listen 127.0.0.1:%PORT%;

        location /api/ {
            ratelimit \$http_x_user_id \$remote_addr;
            ratelimit_default 3 3600s;
            ratelimit_fail closed;
            empty_gif;
        }

        location /org/ {
            ratelimit \$http_x_api_key;
            ratelimit_customer \$http_x_org;
            ratelimit_default 2 3600s;
            empty_gif;
        }

        location /admin/limits {
            ratelimit_admin;
            ratelimit_admin_token $token;
        }

        location = /stats {
            ratelimit_stats;
        }
    }
EOF
}

sub config_for {
    my (%opt) = @_;
    # a generous timeout: these tests are about rules, not a busy machine
    return ratelimit_http(shards => $opt{shards} || [map { $_->port } @redis],
                          zone => $opt{zone} || '1m', timeout => '500ms',
                          body => server_block());
}

my $a = RLTest::Nginx->start(workers => 2, http => config_for());
my $b = RLTest::Nginx->start(workers => 2, http => config_for());

my $json = JSON::PP->new->canonical;

sub admin {
    my ($node, $method, $path, $body, %headers) = @_;
    my %h = (Authorization => "Bearer $token", %headers);
    if (defined $body) {
        $h{'Content-Type'} = 'application/json' unless exists $h{'Content-Type'};
        delete $h{'Content-Type'} unless defined $h{'Content-Type'};
        $h{_body} = ref $body ? $json->encode($body) : $body;
    }
    delete $h{Authorization} unless defined $h{Authorization};
    my $r = $node->request($method, "/admin/limits$path", %h);
    $r->{json} = eval { decode_json($r->{content}) } if $r->{content};
    return $r;
}

sub put_rule {
    my ($node, %rule) = @_;
    return admin($node, 'PUT', '', \%rule);
}

sub hits {
    my ($node, $user, $n, $path) = @_;
    $path ||= '/api/x';
    return [map { $node->get($path, 'X-User-Id' => $user)->{status} } 1 .. $n];
}

subtest 'PUT, GET, DELETE' => sub {
    my $id = unique_key('acme');
    my $r = put_rule($a, customer_id => $id, limit => 10000, window => 60);
    is $r->{status}, 200, 'PUT 200';
    is_deeply $r->{json}, { customer_id => $id, limit => 10000, window => 60 },
        'answers the rule as stored';
    $r = admin($b, 'GET', "/$id");
    is $r->{status}, 200, 'GET on the other node 200';
    is_deeply $r->{json}, { customer_id => $id, limit => 10000, window => 60 },
        'the same rule';
    $r = put_rule($a, customer_id => $id, limit => 5, window => 10,
                  algorithm => 'sliding_window');
    is_deeply admin($a, 'GET', "/$id")->{json},
        { customer_id => $id, limit => 5, window => 10, algorithm => 'sliding_window' },
        'replaced, with its algorithm';
    $r = admin($a, 'DELETE', "/$id");
    is $r->{status}, 200, 'DELETE 200';
    is_deeply $r->{json}, { customer_id => $id, deleted => JSON::PP::true }, 'deleted';
    is admin($a, 'GET', "/$id")->{status}, 404, 'then GET 404';
    is admin($a, 'DELETE', "/$id")->{json}{deleted}, JSON::PP::false,
        'deleting again: nothing was there';
};

subtest 'an upgrade lets a blocked customer through, here at once and there within 1s' => sub {
    my $id = unique_key('freebie');
    is_deeply hits($a, $id, 4), [200, 200, 200, 429], 'free tier: 3 then blocked on A';
    is_deeply hits($b, $id, 1), [429], 'and on B';

    # B has cached the denial; A's change must reach it anyway
    is put_rule($a, customer_id => $id, limit => 10, window => 3600)->{status}, 200,
        'upgraded to 10';
    my $r = $a->get('/api/x', 'X-User-Id' => $id);
    is $r->{status}, 200, 'next request on A allowed';
    is $r->{headers}{'ratelimit-policy'}, '"default";q=10;w=3600', 'under the new rule';
    is $r->{headers}{ratelimit}, '"default";r=6;t=360',
        'the count so far judged against the new limit (10 - 4 used; '
        . 'denials never counted)';

    my $t0 = time;
    my $st;
    while (time - $t0 < 2) {
        $st = $b->get('/api/x', 'X-User-Id' => $id)->{status};
        last if $st == 200;
        sleep 0.05;
    }
    my $took = time - $t0;
    is $st, 200, 'B lets the customer through';
    cmp_ok $took, '<', 1, sprintf 'within 1 s (%.2f s)', $took;
};

sub script_calls {
    my $calls = 0;
    for my $r (@redis) {
        my $stats = $r->cli('INFO', 'commandstats');
        $calls += $1 while $stats =~ /cmdstat_eval(?:sha)?:calls=(\d+)/g;
    }
    return $calls;
}

subtest 'a key known to be over its limit is denied without asking Redis' => sub {
    my $id = unique_key('hot');
    is_deeply hits($a, $id, 4), [200, 200, 200, 429], 'over the limit';
    my $before = decode_json($a->get('/stats')->{content});
    my $calls = script_calls();
    my @st = map { $a->get('/api/x', 'X-User-Id' => $id) } 1 .. 20;
    is_deeply [map { $_->{status} } @st], [(429) x 20], '20 more denials';
    like $st[-1]{headers}{'retry-after'}, qr/^[1-9]\d*$/, 'each with Retry-After';
    is $st[-1]{headers}{ratelimit}, '"default";r=0;t=1200', 'and the headers';
    my $after = decode_json($a->get('/stats')->{content});
    is $after->{denied_cached} - $before->{denied_cached}, 20,
        'all 20 denied from the zone';
    is script_calls() - $calls, 0, 'no script ran in Redis for them';
};

subtest 'a downgrade mid-window is judged against the new limit' => sub {
    my $id = unique_key('shrink');
    is_deeply hits($a, $id, 2), [200, 200], 'two of three used';
    is put_rule($a, customer_id => $id, limit => 2, window => 3600)->{status}, 200,
        'limit lowered to 2';
    is_deeply hits($a, $id, 1), [429], 'over the new limit at once';
};

subtest 'ratelimit_customer: API keys limited at their organisation rate' => sub {
    my $org = unique_key('org');
    is put_rule($a, customer_id => $org, limit => 4, window => 3600)->{status}, 200,
        'org rule: 4';
    my @k1 = map { $a->get('/org/x', 'X-Api-Key' => "$org-k1", 'X-Org' => $org)->{status} } 1 .. 5;
    my @k2 = map { $a->get('/org/x', 'X-Api-Key' => "$org-k2", 'X-Org' => $org)->{status} } 1 .. 5;
    is_deeply \@k1, [200, 200, 200, 200, 429], 'key 1: the org limit, not the default 2';
    is_deeply \@k2, [200, 200, 200, 200, 429], 'key 2: counted on its own';
};

subtest 'bad input: 400 naming the field, and nothing changes' => sub {
    my $id = unique_key('steady');
    put_rule($a, customer_id => $id, limit => 7, window => 60);
    my @bad = (
        ['{"customer_id": "x", "limit": 5', undef, 'malformed JSON'],
        ['[1, 2]', undef, 'not an object'],
        [{ limit => 5, window => 60 }, 'customer_id', 'missing customer_id'],
        [{ customer_id => $id, window => 60 }, 'limit', 'missing limit'],
        [{ customer_id => $id, limit => 5 }, 'window', 'missing window'],
        [{ customer_id => $id, limit => 5, window => 60, extra => 1 }, 'extra', 'extra field'],
        [qq({"customer_id": "$id", "limit": "100", "window": 60}), 'limit', 'string limit'],
        [qq({"customer_id": "$id", "limit": 100, "window": 60.5}), 'window', 'float window'],
        [qq({"customer_id": "$id", "limit": 100, "window": 60.0}), 'window', 'integral float window'],
        [{ customer_id => $id, limit => 0, window => 60 }, 'limit', 'limit 0'],
        [{ customer_id => $id, limit => -5, window => 60 }, 'limit', 'negative limit'],
        [{ customer_id => $id, limit => 1000000001, window => 60 }, 'limit', 'limit over 1e9'],
        [{ customer_id => $id, limit => 5, window => 0 }, 'window', 'window 0'],
        [{ customer_id => $id, limit => 5, window => 86401 }, 'window', 'window over a day'],
        [{ customer_id => '', limit => 5, window => 60 }, 'customer_id', 'empty customer'],
        [{ customer_id => 'x' x 257, limit => 5, window => 60 }, 'customer_id', 'customer over 256 bytes'],
        [{ customer_id => "a\nb", limit => 5, window => 60 }, 'customer_id', 'control character'],
        [{ customer_id => $id, limit => 5, window => 60, algorithm => 'leaky' }, 'algorithm', 'unknown algorithm'],
    );
    for my $case (@bad) {
        my ($body, $field, $what) = @$case;
        my $r = admin($a, 'PUT', '', $body);
        is $r->{status}, 400, "$what: 400";
        is $r->{json}{field}, $field, "$what: names " . ($field // 'no field');
        ok length($r->{json}{error} || '') > 5, "$what: says why ($r->{json}{error})";
    }
    my $r = admin($a, 'PUT', '', '{"customer_id":"' . $id . '","limit":5,"window":60,"x":"'
                  . ('y' x 5000) . '"}');
    is $r->{status}, 413, 'a body over 4 KiB: 413';
    $r = admin($a, 'PUT', '', { customer_id => $id, limit => 5, window => 60 },
               'Content-Type' => 'text/plain');
    is $r->{status}, 415, 'not application/json: 415';
    $r = admin($a, 'POST', '', { customer_id => $id, limit => 5, window => 60 });
    is $r->{status}, 405, 'POST: 405';
    is $r->{headers}{allow}, 'GET, HEAD, PUT', 'with Allow (GET: the list)';
    $r = admin($a, 'PUT', "/$id", { customer_id => $id, limit => 5, window => 60 });
    is $r->{status}, 405, 'PUT on a customer: 405';
    is $r->{headers}{allow}, 'GET, HEAD, DELETE', 'with Allow';
    is_deeply admin($a, 'GET', "/$id")->{json},
        { customer_id => $id, limit => 7, window => 60 }, 'the rule did not change';
};

subtest 'nobody gets in without the token' => sub {
    my $id = unique_key('intruder');
    my $r = admin($a, 'PUT', '', { customer_id => $id, limit => 5, window => 60 },
                  Authorization => undef);
    is $r->{status}, 401, 'no token: 401';
    like $r->{headers}{'www-authenticate'}, qr/^Bearer/, 'WWW-Authenticate: Bearer';
    $r = admin($a, 'PUT', '', { customer_id => $id, limit => 5, window => 60 },
               Authorization => "Bearer ${token}x");
    is $r->{status}, 401, 'wrong token: 401';
    $r = admin($a, 'PUT', '', { customer_id => $id, limit => 5, window => 60 },
               Authorization => "Basic $token");
    is $r->{status}, 401, 'not a bearer token: 401';
    is admin($a, 'GET', "/$id", undef, Authorization => undef)->{status}, 401,
        'GET without a token: 401';
    is admin($a, 'GET', "/$id")->{status}, 404, 'and nothing was stored';
};

subtest 'rules survive an nginx restart' => sub {
    my $id = unique_key('durable');
    put_rule($a, customer_id => $id, limit => 5, window => 3600);
    $a->stop;
    $a = RLTest::Nginx->start(workers => 2, http => config_for());
    is admin($a, 'GET', "/$id")->{json}{limit}, 5, 'GET after the restart';
    is_deeply hits($a, $id, 6), [200, 200, 200, 200, 200, 429], 'and limited by it';
};

subtest 'the loss of a shard loses no rule' => sub {
    my @ids = map { unique_key("kept$_") } 1 .. 20;
    put_rule($a, customer_id => $_, limit => 5, window => 3600) for @ids;
    $redis[1]->stop;
    my @got = map { admin($b, 'GET', "/$_")->{json}{limit} // 'none' } @ids;
    is_deeply \@got, [(5) x 20], 'every rule still readable';

    # a caller whose count lives on the live shard is held to its rule
    my ($on_live) = grep { $b->get('/api/x', 'X-User-Id' => $_)->{status} == 200
                           && redis_has_key($redis[0]->port, "rl:tb:http_x_user_id:k:$_") } @ids;
    ok $on_live, 'found a customer counted on the live shard';
    is_deeply hits($b, $on_live, 5), [200, 200, 200, 200, 429],
        'limited at its rule (5), not the default (3)';

    my $id = unique_key('refused');
    my $r = put_rule($a, customer_id => $id, limit => 9, window => 60);
    is $r->{status}, 503, 'a change while a shard is down: 503';
    like $r->{json}{error}, qr/not changed/, 'says nothing changed';
    is admin($a, 'GET', "/$id")->{status}, 404, 'and nothing was stored';
    # an undone write leaves "<stamp> ~-" (no rule, and later than the write,
    # which must not come back from a shard that missed the undo)
    like $redis[0]->cli('HGET', 'rl:rules', $id), qr/^(?:\(nil\)|"\d+ ~-")$/,
        'not even on the live shard';

    $redis[1]->restart;
};

subtest 'a shard added to the ring, or restarted empty, is brought up to date' => sub {
    my $id = unique_key('synced');
    # shard 2 came back empty above; let the polls of both nodes see it
    my $deadline = time + 3;
    sleep 0.1 until time > $deadline || $redis[1]->cli('HLEN', 'rl:rules') =~ /\(integer\) [1-9]/;
    like $redis[1]->cli('HLEN', 'rl:rules'), qr/\(integer\) [1-9]/,
        'the emptied shard got the rules back';

    my $third = RLTest::Redis->start;
    $a->reload(config_for(shards => [ (map { $_->port } @redis), $third->port ]));
    $b->reload(config_for(shards => [ (map { $_->port } @redis), $third->port ]));
    put_rule($a, customer_id => $id, limit => 4, window => 3600);
    $deadline = time + 3;
    sleep 0.1 until time > $deadline || $third->cli('HEXISTS', 'rl:rules', $id) eq '(integer) 1';
    is $third->cli('HEXISTS', 'rl:rules', $id), '(integer) 1', 'the new shard holds the new rule';
    my $all = $redis[0]->cli('HLEN', 'rl:rules');
    $deadline = time + 3;
    sleep 0.1 until time > $deadline || $third->cli('HLEN', 'rl:rules') eq $all;
    is $third->cli('HLEN', 'rl:rules'), $all, "and every older one ($all)";

    # and back to two shards: nothing falls back to the default
    $a->reload(config_for());
    is admin($a, 'GET', "/$id")->{json}{limit}, 4, 'after removing it, the rule is still there';
    $third->stop;
};

subtest 'a full rule cache evicts the least recently used, never fails' => sub {
    my $small = RLTest::Nginx->start(workers => 1, http => config_for(zone => '64k'));
    my @ids = map { unique_key("many$_") } 1 .. 800;
    for my $i (0 .. $#ids) {
        put_rule($small, customer_id => $ids[$i], limit => 1 + $i % 2 + 3, window => 3600)->{status} == 200
            or die "PUT failed";
    }
    my $wrong = 0;
    for my $i (0 .. $#ids) {
        my $r = $small->get('/api/x', 'X-User-Id' => $ids[$i]);
        my $want = '"default";q=' . (1 + $i % 2 + 3) . ';w=3600';
        $wrong++ unless $r->{status} == 200 && $r->{headers}{'ratelimit-policy'} eq $want;
    }
    is $wrong, 0, '800 customers, each under its own rule';
    my $stats = decode_json($small->get('/stats')->{content});
    cmp_ok $stats->{rule_cache}{evictions}, '>', 0,
        "the cache evicted ($stats->{rule_cache}{evictions} evictions, "
        . "$stats->{rule_cache}{entries} entries)";
    unlike $small->error_log, qr/exited on signal|\[alert\]|\[emerg\]/, 'no crash';
    $small->stop;
};

subtest 'the token: required, long enough, inline or from a file' => sub {
    my $conf = sub {
        my ($admin) = @_;
        return ratelimit_http(shards => [map { $_->port } @redis], body =>
            "    server {\n        listen 127.0.0.1:%PORT%;\n"
            . "        location /admin/limits { $admin }\n    }\n");
    };
    my ($rc, $out) = RLTest::Nginx->check_config(http => $conf->('ratelimit_admin;'));
    isnt $rc, 0, 'no token: nginx -t fails';
    like $out, qr/"ratelimit_admin" requires "ratelimit_admin_token"/, 'and says so';
    ($rc, $out) = RLTest::Nginx->check_config(
        http => $conf->('ratelimit_admin; ratelimit_admin_token short;'));
    like $out, qr/admin token is too short/, 'a short token is refused';
    ($rc, $out) = RLTest::Nginx->check_config(
        http => $conf->('ratelimit_admin; ratelimit_admin_token file=/nonexistent/token;'));
    like $out, qr{"/nonexistent/token" failed}, 'a missing token file is named';

    my $dir = File::Temp::tempdir(CLEANUP => 1);
    open my $fh, '>', "$dir/token" or die $!;
    print $fh "from-a-file-0123456789\n";
    close $fh;
    my $n = RLTest::Nginx->start(workers => 1, http => $conf->(
        "ratelimit_admin; ratelimit_admin_token file=$dir/token;"));
    my $r = $n->request('GET', '/admin/limits/nobody',
                        Authorization => 'Bearer from-a-file-0123456789');
    is $r->{status}, 404, 'the token from the file lets in (newline ignored)';
    $r = $n->request('GET', '/admin/limits/nobody',
                     Authorization => "Bearer $token");
    is $r->{status}, 401, 'another token does not';
    $n->stop;
};

unlike $a->error_log . $b->error_log, qr/exited on signal|\[alert\]|\[emerg\]/,
    'no worker crashed';

done_testing;
