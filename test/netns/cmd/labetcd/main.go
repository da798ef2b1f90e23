// Command labetcd runs one embedded etcd member for the netns lab and for
// `make demo`. It is started inside a lab namespace with `ip netns exec`, so
// that its sockets belong to the lab and never to the host's network.
package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	name := flag.String("name", "lab0", "member name")
	dir := flag.String("data-dir", "", "data directory (required)")
	clientURLs := flag.String("listen-client-urls", "http://127.0.0.1:2379", "comma-separated client URLs")
	peerURLs := flag.String("listen-peer-urls", "http://127.0.0.1:2380", "comma-separated peer URLs")
	cluster := flag.String("initial-cluster", "", "name=peerURL,... (default: this member alone)")
	state := flag.String("initial-cluster-state", "new", "new or existing")
	certFile := flag.String("cert-file", "", "server certificate (PEM) for https client URLs")
	keyFile := flag.String("key-file", "", "private key (PEM) of --cert-file")
	trustedCA := flag.String("trusted-ca-file", "", "CA (PEM) that signs client certificates; given, clients must present one")
	tokenTTL := flag.Uint("auth-token-ttl", 300, "seconds an unused auth token lives, once authentication is on")
	heartbeat := flag.Uint("heartbeat-interval", 0, "raft heartbeat interval in milliseconds (0: etcd's, 100)")
	election := flag.Uint("election-timeout", 0, "raft election timeout in milliseconds (0: etcd's, 1000)")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "labetcd: --data-dir is required")
		os.Exit(2)
	}

	cfg := embed.NewConfig()
	cfg.Name = *name
	cfg.Dir = *dir
	cfg.LogLevel = "warn"
	// The lab's etcd lives in a temporary directory of a test: durability
	// buys nothing and fsync costs every write.
	cfg.UnsafeNoFsync = true
	var err error
	if cfg.ListenClientUrls, err = urls(*clientURLs); err == nil {
		cfg.AdvertiseClientUrls = cfg.ListenClientUrls
		cfg.ListenPeerUrls, err = urls(*peerURLs)
		cfg.AdvertisePeerUrls = cfg.ListenPeerUrls
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "labetcd:", err)
		os.Exit(2)
	}
	cfg.InitialCluster = *cluster
	if cfg.InitialCluster == "" {
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	}
	cfg.ClusterState = *state
	cfg.ClientTLSInfo.CertFile = *certFile
	cfg.ClientTLSInfo.KeyFile = *keyFile
	cfg.ClientTLSInfo.TrustedCAFile = *trustedCA
	cfg.ClientTLSInfo.ClientCertAuth = *trustedCA != ""
	cfg.AuthTokenTTL = *tokenTTL
	// bcrypt.MinCost: every login hashes the password, and the lab's
	// passwords guard nothing worth the default's 2^10 rounds.
	cfg.BcryptCost = 4
	// Tests of member loss and partitions shorten both, so that a new
	// leader is elected, and a member cut off notices it has none, in
	// a fraction of etcd's default seconds.
	if *heartbeat > 0 {
		cfg.TickMs = *heartbeat
	}
	if *election > 0 {
		cfg.ElectionMs = *election
	}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "labetcd: start:", err)
		os.Exit(1)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
		fmt.Println("labetcd: ready", *clientURLs)
	case <-time.After(60 * time.Second):
		fmt.Fprintln(os.Stderr, "labetcd: not ready after 60s")
		os.Exit(1)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-sig:
	case err := <-e.Err():
		fmt.Fprintln(os.Stderr, "labetcd:", err)
		os.Exit(1)
	}
}

func urls(s string) ([]url.URL, error) {
	var out []url.URL
	for _, part := range strings.Split(s, ",") {
		u, err := url.Parse(strings.TrimSpace(part))
		if err != nil {
			return nil, fmt.Errorf("bad URL %q: %v", part, err)
		}
		out = append(out, *u)
	}
	return out, nil
}
