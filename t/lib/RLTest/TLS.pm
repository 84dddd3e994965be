package RLTest::TLS;

# Certificates made by openssl in a private directory, and real Redis
# servers that speak TLS with them (Debian's redis-server is built with
# TLS).  Each server keeps a plain port beside its TLS one, for the test's
# own redis-cli: the module is only ever pointed at the TLS port.

use strict;
use warnings;

use File::Temp qw(tempdir);

use RLTest::Redis;

# Makes, once per test process: a CA and a server certificate it signs
# (names 127.0.0.1 as an IP address and localhost), a client certificate it
# signs, and an unrelated second CA.  Returns a hash of file paths:
# ca, server_crt, server_key, client_crt, client_key, other_ca; dir.
my $certs;

sub certs {
    return $certs if $certs;
    my $dir = tempdir('rltest-tls-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    chmod 0755, $dir;

    my @key = ('-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
               '-nodes');

    for my $ca (qw(ca other_ca)) {
        openssl('req', '-x509', @key, '-keyout', "$dir/$ca.key",
                '-out', "$dir/$ca.crt", '-days', '2',
                '-subj', "/CN=RLTest $ca");
    }

    my %ext = (
        server => "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                  . "extendedKeyUsage=serverAuth\n",
        client => "extendedKeyUsage=clientAuth\n",
    );

    for my $who (qw(server client)) {
        open my $fh, '>', "$dir/$who.ext" or die $!;
        print $fh $ext{$who};
        close $fh;
        openssl('req', '-new', @key, '-keyout', "$dir/$who.key",
                '-out', "$dir/$who.csr", '-subj', "/CN=RLTest $who");
        openssl('x509', '-req', '-in', "$dir/$who.csr", '-CA', "$dir/ca.crt",
                '-CAkey', "$dir/ca.key", '-CAcreateserial',
                '-out', "$dir/$who.crt", '-days', '2',
                '-extfile', "$dir/$who.ext");
    }

    chmod 0644, glob "$dir/*";

    $certs = {
        dir        => $dir,
        ca         => "$dir/ca.crt",
        other_ca   => "$dir/other_ca.crt",
        server_crt => "$dir/server.crt",
        server_key => "$dir/server.key",
        client_crt => "$dir/client.crt",
        client_key => "$dir/client.key",
    };
    return $certs;
}

sub openssl {
    my @args = @_;
    my $out = `openssl @{[ map { "'$_'" } @args ]} 2>&1`;
    die "openssl @args failed: $out" if $?;
}

# A redis-server listening on a plain port (->port, for redis-cli) and a
# TLS one (->{tls_port}, for the module).  auth_clients => 'yes' requires a
# client certificate signed by the CA; args => [...] go to redis-server too.
sub start_redis {
    my (%opt) = @_;
    my $c = certs();
    my $tls_port = RLTest::Redis::free_port();
    my $redis = RLTest::Redis->start(args => [
        '--tls-port', $tls_port,
        '--tls-cert-file', $c->{server_crt},
        '--tls-key-file', $c->{server_key},
        '--tls-ca-cert-file', $c->{ca},
        '--tls-auth-clients', $opt{auth_clients} || 'no',
        @{ $opt{args} || [] },
    ]);
    $redis->{tls_port} = $tls_port;
    return $redis;
}

# What Redis counted of the connections it accepted (INFO stats).
sub connections_received {
    my ($redis) = @_;
    my $info = $redis->cli('INFO', 'stats');
    return $info =~ /total_connections_received:(\d+)/ ? $1 : -1;
}

1;
