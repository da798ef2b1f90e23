package store

import (
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// TestAudit: `vtepd leases` judges keys as the agent's table does: what
// the table skips is invalid, what it refuses for a clash with an older
// lease is a conflict, with the reason; the rest is valid.
func TestAudit(t *testing.T) {
	kv := func(key, value string, rev int64) *mvccpb.KeyValue {
		return &mvccpb.KeyValue{Key: []byte(key), Value: []byte(value), CreateRevision: rev, ModRevision: rev}
	}
	lease := func(subnet string, id byte) string { return string(mkLease(subnet, id, 0).Value()) }
	otherVNI := mkLease("10.5.7.0/24", 7, 0)
	otherVNI.VNI = 9
	kvs := []*mvccpb.KeyValue{
		kv(testSubnetsPrefix+"10.5.1.0-24", lease("10.5.1.0/24", 1), 10),
		kv(testSubnetsPrefix+"10.5.0.0-16", lease("10.5.0.0/16", 2), 11),                               // over everyone
		kv(testSubnetsPrefix+"10.5.1.128-25", lease("10.5.1.128/25", 3), 12),                           // inside 10.5.1.0/24
		kv(testSubnetsPrefix+"10.5.4.0-24", lease("10.5.4.0/24", 1), 13),                               // 10.5.1.0/24's MAC
		kv(testSubnetsPrefix+"10.5.7.0-24", string(otherVNI.Value()), 14),                              // another VNI
		kv(testSubnetsPrefix+"10.9.0.0-24", lease("10.9.0.0/24", 5), 15),                               // outside the network
		kv(testSubnetsPrefix+"10.5.8.0-24", `{"PublicIP":"not an address","BackendType":"vxlan"}`, 16), // unreadable
		kv(testSubnetsPrefix+"10.5.1.0-24/extra", lease("10.5.1.0/24", 6), 17),                         // not a lease key
		kv(testSubnetsPrefix+"10.5.9.0-24", lease("10.5.9.0/24", 9), 18),
	}
	want := []struct{ status, reason string }{
		{"valid", ""},
		{"conflict", "overlaps 10.5.1.0/24"},
		{"conflict", "overlaps 10.5.1.0/24"},
		{"conflict", "VtepMAC 02:00:00:00:00:01 is already used by " + testSubnetsPrefix + "10.5.1.0-24"},
		{"invalid", "BackendData.VNI 9 differs from the network's VNI 1"},
		{"invalid", "outside the overlay network"},
		{"invalid", "PublicIP"},
		{"invalid", "not a lease key"},
		{"valid", ""},
	}
	got := Audit(testConfig(), testPrefix, kvs)
	if len(got) != len(want) {
		t.Fatalf("%d verdicts for %d keys", len(got), len(kvs))
	}
	for i, w := range want {
		g := got[i]
		if g.Key != string(kvs[i].Key) || g.Status != w.status || !strings.Contains(g.Reason, w.reason) || (w.reason == "") != (g.Reason == "") {
			t.Errorf("%s: %s %q, want %s %q", kvs[i].Key, g.Status, g.Reason, w.status, w.reason)
		}
	}
	if got[0].Lease.Subnet.String() != "10.5.1.0/24" || got[1].Lease.Subnet.String() != "10.5.0.0/16" {
		t.Errorf("valid and conflicting keys carry their lease: %+v, %+v", got[0].Lease, got[1].Lease)
	}
	// A table that loads the same keys admits exactly the valid ones.
	tb := NewTable(testConfig())
	s := &syncer{t: tb, prefix: testSubnetsPrefix, warned: map[string]int64{}}
	var leases []Lease
	for _, kv := range kvs {
		if l, err := s.parseKV(kv); err == nil {
			leases = append(leases, l)
		}
	}
	tb.replaceAll(leases)
	for i, v := range got {
		if _, admitted := tb.LookupKey(v.Key); admitted != (v.Status == "valid") {
			t.Errorf("%s: audited %s, but the table admits it: %v", kvs[i].Key, v.Status, admitted)
		}
	}
}
