package main

import (
	"context"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/vtepd/vtepd/store"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// startEtcd runs a one-member etcd in this process on loopback ports the
// kernel picks, and returns a client for it.
func startEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "seed-test"
	cfg.Dir = t.TempDir()
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = true
	cfg.TickMs, cfg.ElectionMs = 10, 100
	loopback := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	cfg.ListenClientUrls = []url.URL{loopback}
	cfg.AdvertiseClientUrls = []url.URL{loopback}
	cfg.ListenPeerUrls = []url.URL{loopback}
	cfg.AdvertisePeerUrls = []url.URL{loopback}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("etcd not ready after 30s")
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Clients[0].Addr().String()}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestSeed(t *testing.T) {
	c := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	const prefix = "/coreos.com/network"
	subnets := store.SubnetsPrefix(prefix)

	// A real host holds 10.0.3.0/24: its lease stays, and the seeder goes on
	// past it.
	real := store.Lease{Subnet: netip.MustParsePrefix("10.0.3.0/24"), PublicIP: netip.MustParseAddr("192.0.2.3"), VtepMAC: store.MAC{0x02, 0, 0, 0, 0, 3}, VNI: 1}
	realKey := subnets + store.SubnetKey(real.Subnet)
	if _, err := c.Put(ctx, realKey, string(real.Value())); err != nil {
		t.Fatal(err)
	}
	opts, err := parseOptions(prefix, 300, "10.0.0.0/8", 24, "", 0, 1, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// The network's configuration is checked, not written.
	if err := checkConfig(ctx, c, opts); err != nil {
		t.Errorf("without a configuration: %v", err)
	}
	cfgValue := `{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}`
	if _, err := c.Put(ctx, store.ConfigKey(prefix), cfgValue); err != nil {
		t.Fatal(err)
	}
	if err := checkConfig(ctx, c, opts); err != nil {
		t.Errorf("with a matching configuration: %v", err)
	}
	other, _ := parseOptions(prefix, 300, "10.0.0.0/8", 24, "", 0, 2, time.Hour)
	if err := checkConfig(ctx, c, other); err == nil || !strings.Contains(err.Error(), "VNI 2") {
		t.Errorf("with another VNI: %v", err)
	}
	s, err := seed(ctx, c, opts)
	if err != nil {
		t.Fatal(err)
	}
	// 301 subnets from flannel's SubnetMin 10.0.1.0 on, less the real one:
	// three transactions, one of them tried twice.
	if s.Count != 300 || s.Skipped != 1 || s.First != "10.0.1.0/24" || s.Last != "10.1.45.0/24" || s.Txns != 4 || s.Lease == "" {
		t.Errorf("summary %+v", s)
	}

	resp, err := c.Get(ctx, subnets, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if cfg := mustGet(t, c, store.ConfigKey(prefix)); cfg != cfgValue {
		t.Errorf("the configuration became %s", cfg)
	}
	if len(resp.Kvs) != 301 {
		t.Fatalf("%d keys under %s", len(resp.Kvs), subnets)
	}
	macs := make(map[store.MAC]string)
	var lease int64
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		l, err := store.ParseLease(strings.TrimPrefix(key, subnets), kv.Value)
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		if other, ok := macs[l.VtepMAC]; ok {
			t.Errorf("%s and %s share VtepMAC %s", key, other, l.VtepMAC)
		}
		macs[l.VtepMAC] = key
		if key == realKey {
			if string(kv.Value) != string(real.Value()) || kv.Lease != 0 {
				t.Errorf("the real lease was overwritten: %s", kv.Value)
			}
			continue
		}
		if lease == 0 {
			lease = kv.Lease
		}
		if kv.Lease == 0 || kv.Lease != lease || l.VNI != 1 || l.VtepMAC[0] != 0x0e {
			t.Errorf("%s: %s (etcd lease %x)", key, kv.Value, kv.Lease)
		}
	}
	ttl, err := c.TimeToLive(ctx, clientv3.LeaseID(lease))
	if err != nil || ttl.GrantedTTL != 3600 {
		t.Errorf("etcd lease %x: %+v, %v", lease, ttl, err)
	}
	if got := resp.Kvs[0].Value; !strings.HasPrefix(string(got), `{"PublicIP":"`) || !strings.Contains(string(got), `"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"`) {
		t.Errorf("not flannel's format: %s", got)
	}

	// vtepd's table believes every one.
	cfg, err := store.ParseConfig(store.ConfigKey(prefix), []byte(cfgValue))
	if err != nil {
		t.Fatal(err)
	}
	tb := store.NewTable(cfg)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); tb.Sync(sctx, c, prefix, zap.NewNop()) }()
	defer func() { stop(); <-done }()
	select {
	case <-tb.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("not synced")
	}
	if st := tb.Stats(); st.Leases != 301 || st.Invalid != 0 || st.Rejected != 0 {
		t.Errorf("table: %+v", st)
	}

	// Again, without an etcd lease, after the first: it goes on from --start.
	opts, err = parseOptions(prefix, 10, "10.0.0.0/8", 24, "10.1.45.0", 1, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if s, err = seed(ctx, c, opts); err != nil || s.Count != 10 || s.Skipped != 0 || s.First != "10.1.46.0/24" || s.Lease != "" {
		t.Errorf("second seed: %+v, %v", s, err)
	}
	if resp, err := c.Get(ctx, subnets+"10.1.46.0-24"); err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease != 0 {
		t.Errorf("without --ttl: %v, %v", resp, err)
	}

	// A network that runs out of subnets fails, saying how far it got.
	opts, err = parseOptions(prefix, 3, "10.9.0.0/30", 32, "10.9.0.1", 0, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, subnets+"10.9.0.2-32", "taken"); err != nil {
		t.Fatal(err)
	}
	if s, err = seed(ctx, c, opts); err == nil || s.Count != 2 || s.Skipped != 1 {
		t.Errorf("seed into a full network: %+v, %v", s, err)
	}
}

func TestParseOptions(t *testing.T) {
	for _, tc := range []struct {
		count          int
		network, start string
		subnetLen      int
		skip           int
		ttl            time.Duration
		wantStart      string
		wantErr        string
	}{
		{count: 1, network: "10.0.0.0/8", subnetLen: 24, wantStart: "10.0.1.0"},
		{count: 65535, network: "10.0.0.0/8", subnetLen: 24, wantStart: "10.0.1.0"},
		{count: 65536, network: "10.0.0.0/8", subnetLen: 24, wantErr: "fewer than 65536"},
		{count: 10, network: "10.0.0.0/8", subnetLen: 24, start: "10.200.0.0", skip: 5, wantStart: "10.200.5.0"},
		{count: 1, network: "10.5.0.0/24", subnetLen: 24, wantStart: "10.5.0.0"},
		{count: 0, network: "10.0.0.0/8", subnetLen: 24, wantErr: "--count"},
		{count: 1, network: "10.0.0.1/8", subnetLen: 24, wantErr: "--network"},
		{count: 1, network: "fd00::/8", subnetLen: 24, wantErr: "--network"},
		{count: 1, network: "10.0.0.0/8", subnetLen: 7, wantErr: "--subnet-len"},
		{count: 1, network: "10.0.0.0/8", subnetLen: 24, start: "10.0.0.5", wantErr: "--start"},
		{count: 1, network: "10.0.0.0/8", subnetLen: 24, start: "11.0.0.0", wantErr: "--start"},
		{count: 1, network: "10.0.0.0/8", subnetLen: 24, ttl: time.Millisecond, wantErr: "--ttl"},
	} {
		o, err := parseOptions("/p", tc.count, tc.network, tc.subnetLen, tc.start, tc.skip, 1, tc.ttl)
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%+v: error %v, want one about %s", tc, err, tc.wantErr)
			}
		case err != nil || o.start.String() != tc.wantStart:
			t.Errorf("%+v: start %s, %v; want %s", tc, o.start, err, tc.wantStart)
		}
	}
}

func TestPublicIPs(t *testing.T) {
	for i, want := range map[int]string{0: "203.0.113.1", 253: "203.0.113.254", 254: "198.18.0.1", 254 + 131069: "198.19.255.254", 254 + 131070: "203.0.113.1"} {
		if got := publicIP(i).String(); got != want {
			t.Errorf("publicIP(%d) = %s, want %s", i, got, want)
		}
	}
}

func mustGet(t *testing.T, c *clientv3.Client, key string) string {
	t.Helper()
	resp, err := c.Get(context.Background(), key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get %s: %v, %v", key, resp, err)
	}
	return string(resp.Kvs[0].Value)
}
