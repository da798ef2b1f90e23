package netns_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vtepd/vtepd/store"
	"github.com/vtepd/vtepd/test/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// newCluster is a lab with an n-member etcd holding the network config.
func newCluster(t *testing.T, name string, n int) (*netns.Lab, []*netns.Etcd) {
	t.Helper()
	lab := newLab(t, name)
	members, err := lab.StartEtcdCluster(n)
	if err != nil {
		t.Fatalf("starting a %d-member etcd: %v", n, err)
	}
	if err := lab.PutNetworkConfig(ctxFor(t, 10*time.Second), overlayConfig); err != nil {
		t.Fatal(err)
	}
	return lab, members
}

// TestEtcdOutages: etcd failing costs no traffic. Misses for known leases are
// answered from the table while etcd is down; vtepd reconnects by itself;
// what changed while it was away is applied when it is back, through a
// re-list when the watch fell behind compaction; and its own lease, expired
// meanwhile, is taken again. Each outage a host sees is logged once when it
// starts and once when it ends, with how long it lasted, and counted in the
// metrics.
func TestEtcdOutages(t *testing.T) {
	t.Parallel()
	claimNeighbours(t, 48) // three etcd members and hosts pinging each other hold some 40 neighbour entries
	lab, members := newCluster(t, "vtetcd", 3)
	o := &overlay{lab: lab}
	h1 := o.addHost(t, 8)
	h2 := o.addHost(t, 8)
	// h3 talks to member 1 alone, so that losing member 1 cuts it off from
	// a cluster that carries on; its lease lives 10 s.
	h3, err := lab.AddHost()
	if err != nil {
		t.Fatal(err)
	}
	h3.Endpoints = []string{members[0].ClientURL}
	if _, err := h3.StartVtepd("--subnet-lease-ttl", "10s"); err != nil {
		t.Fatal(err)
	}
	if _, err := h3.AddContainer(2); err != nil {
		t.Fatal(err)
	}
	o.hosts = append(o.hosts, h3)
	c := etcdClient(t, lab)
	fakes := newFakes(t, c, 3)
	// freshAddr hands out container addresses no host has resolved yet.
	next := 0
	freshAddr := func() int { next++; return next - 1 }

	t.Run("all members down: misses answered from the table", func(t *testing.T) {
		marks := markAll(o.hosts)
		killed := time.Now()
		for _, m := range members {
			m.Kill()
		}
		firstPing(t, h1, h2.Container.Extra[freshAddr()])
		firstPing(t, h2, h1.Container.Extra[freshAddr()])
		// Down until every host has seen it (vtepd checks its connection
		// every second).
		for _, h := range o.hosts {
			err := netns.Poll(10*time.Second, func() error {
				if len(h.Vtepd.Entries(msgWatchLost)) == marks[h].watch.starts {
					return errString("no outage logged yet")
				}
				return nil
			})
			if err != nil {
				t.Errorf("%s, all etcd members down for %v: %v", h.Name, time.Since(killed).Round(time.Millisecond), err)
			}
		}
		back := time.Now()
		for _, m := range members {
			if err := m.Start(); err != nil {
				t.Fatal(err)
			}
		}
		if err := lab.WaitEtcd(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		// A lease written after the outage reaches the table: the watch
		// came back on its own.
		f := fakes[0]
		put(t, c, f.Key(), f.Value())
		if err := installedFor(t, h1, f.Addr(5), f.MAC, 30*time.Second); err != nil {
			t.Fatalf("after etcd came back: %v", err)
		}
		for _, h := range o.hosts {
			expectOneOutage(t, h, watchOutage, marks[h], killed, back)
		}
	})

	t.Run("one member down: no interruption", func(t *testing.T) {
		members[1].Kill()
		f := fakes[0]
		del(t, c, f.Key())
		if took, err := goneWithin(t, h1, f.MAC, f.Subnet, 10*time.Second); err != nil {
			t.Errorf("a delete with one member down did not reach h1: %v", err)
		} else {
			t.Logf("delete applied %v later with one member of three down", took.Round(time.Millisecond))
		}
		firstPing(t, h2, h1.Container.Extra[freshAddr()])
	})

	t.Run("quorum lost, then back", func(t *testing.T) {
		members[2].Kill() // member 1 alone: no leader
		firstPing(t, h1, h2.Container.Extra[freshAddr()])
		for _, m := range members[1:] {
			if err := m.Start(); err != nil {
				t.Fatal(err)
			}
		}
		if err := lab.WaitEtcd(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		f := fakes[1]
		put(t, c, f.Key(), f.Value())
		if err := installedFor(t, h1, f.Addr(5), f.MAC, 30*time.Second); err != nil {
			t.Fatalf("after quorum came back: %v", err)
		}
		if err := installedFor(t, h3, f.Addr(6), f.MAC, 30*time.Second); err != nil {
			t.Fatalf("after quorum came back: %v", err)
		}
	})

	t.Run("cut off past compaction and own lease expiry", func(t *testing.T) {
		h3Subnet := mustSubnet(t, h3)
		h3Lease := leaseOf(t, o, h3Subnet)
		marks := markOutages(h3)
		killed := time.Now()
		members[0].Kill() // h3's only member
		f := fakes[1]
		del(t, c, f.Key())
		// h3's lease expires while it cannot renew it.
		err := netns.Poll(30*time.Second, func() error {
			resp, err := c.Get(ctxFor(t, 5*time.Second), leaseKey(h3Subnet))
			if err == nil && len(resp.Kvs) > 0 {
				return errStillThere
			}
			return err
		})
		if err != nil {
			t.Fatalf("h3's lease did not expire while h3 was cut off: %v", err)
		}
		// Compact past everything h3 missed: its watch cannot resume.
		err = netns.Poll(30*time.Second, func() error {
			resp, err := c.Get(ctxFor(t, 5*time.Second), "/")
			if err == nil {
				_, err = c.Compact(ctxFor(t, 5*time.Second), resp.Header.Revision)
			}
			return err
		})
		if err != nil {
			t.Fatalf("compacting: %v", err)
		}
		// The renewal due meanwhile waits for etcd, up to 15 s, then
		// fails: the outage of renewals, logged once however many
		// attempts fail.
		err = netns.Poll(30*time.Second, func() error {
			if len(h3.Vtepd.Entries(msgRenewFails)) == marks.renewal.starts {
				return errString("no renewal failed yet")
			}
			return nil
		})
		if err != nil {
			t.Fatalf("h3 cut off for %v: %v", time.Since(killed).Round(time.Millisecond), err)
		}
		relists := len(h3.Vtepd.Entries("lease watch fell behind etcd compaction; re-listing"))
		restarted := time.Now()
		if err := members[0].Start(); err != nil {
			t.Fatal(err)
		}
		if took, err := goneWithin(t, h3, f.MAC, f.Subnet, 45*time.Second); err != nil {
			t.Errorf("the delete made while h3 was cut off was not applied: %v", err)
		} else {
			t.Logf("h3 applied the missed delete %v after its member restarted", took.Round(time.Millisecond))
		}
		if got := len(h3.Vtepd.Entries("lease watch fell behind etcd compaction; re-listing")); got <= relists {
			t.Errorf("h3 did not re-list after falling behind compaction")
		}
		err = netns.Poll(30*time.Second, func() error {
			resp, err := c.Get(ctxFor(t, 5*time.Second), leaseKey(h3Subnet))
			if err != nil || len(resp.Kvs) == 0 {
				return fmt.Errorf("h3's lease not back: %v", err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		back := leaseOf(t, o, h3Subnet)
		if !back.SameTarget(h3Lease) {
			t.Errorf("h3's lease came back as %v, want %v", back, h3Lease)
		}
		firstPing(t, h1, h3.Container.Extra[0])
		firstPing(t, h3, h1.Container.Extra[freshAddr()])
		expectOneOutage(t, h3, watchOutage, marks, killed, restarted)
		expectOneOutage(t, h3, renewalOutage, marks, killed, restarted)
	})

	// The outages not checked one by one above (one member down, or no
	// quorum for a moment, which a host may or may not notice) are logged
	// in pairs and counted too.
	for _, h := range o.hosts {
		checkOutageMetrics(t, h)
	}
}

// TestOwnLeaseRenewalOutage: the renewal of this host's lease survives a
// short outage of its only etcd member, over the time the renewal is due,
// while the rest of the cluster carries on (and counts the lease down): it
// happens once the member is back, before the lease expires, and the lease
// is never lost. The lease lives 20 s and is renewed 10 s before expiry;
// the member goes away 1 s before the renewal is due, for 3 s. The outage
// is logged, once, as the watch's; the renewal is done once etcd is back,
// long before the lease expires.
func TestOwnLeaseRenewalOutage(t *testing.T) {
	t.Parallel()
	lab, members := newCluster(t, "vtrenew", 3)
	h, err := lab.AddHost()
	if err != nil {
		t.Fatal(err)
	}
	h.Endpoints = []string{members[0].ClientURL}
	if _, err := h.StartVtepd("--subnet-lease-ttl", "20s"); err != nil {
		t.Fatal(err)
	}
	c := etcdClient(t, lab)
	key := leaseKey(mustSubnet(t, h))
	created := modRevisionAndCreate(t, c, key)
	renewals := func() int { return len(h.Vtepd.Entries("own lease renewed")) }
	// When the renewal is due, from what vtepd says of its lease.
	left := value(scrape(t, h), "vtepd_own_lease_expiry_seconds")
	if left < 15 || left > 20 {
		t.Fatalf("the lease expires in %vs, want a fresh 20 s lease", left)
	}
	due := time.Now().Add(time.Duration(left*float64(time.Second)) - 10*time.Second)
	atKill := renewals()
	time.Sleep(time.Until(due.Add(-time.Second))) // the scenario: an outage over the renewal time
	if renewals() != atKill {
		t.Fatalf("h renewed its lease before it was due (%v from now)", time.Until(due))
	}
	marks := markOutages(h)
	killed := time.Now()
	members[0].Kill()
	lost := false
	for stop := time.Now().Add(3 * time.Second); time.Now().Before(stop); time.Sleep(200 * time.Millisecond) {
		resp, err := c.Get(ctxFor(t, 2*time.Second), key)
		lost = lost || err == nil && len(resp.Kvs) == 0
	}
	if renewals() != atKill {
		t.Fatalf("h renewed during the outage: the test did not cut it off")
	}
	back := time.Now()
	if err := members[0].Start(); err != nil {
		t.Fatal(err)
	}
	// The renewal due during the outage happens once etcd is back (the
	// call waits for it, or is retried), a second at least before the
	// lease would expire.
	expiry := due.Add(10 * time.Second)
	if err := netns.Poll(time.Until(expiry.Add(-time.Second)), func() error {
		if renewals() == atKill {
			return errStillThere
		}
		return nil
	}); err != nil {
		t.Errorf("no renewal after the outage, %v before the lease expires", time.Until(expiry).Round(10*time.Millisecond))
	}
	if lost || modRevisionAndCreate(t, c, key) != created {
		t.Errorf("h's lease was lost during a 3 s outage of a 20 s lease")
	}
	expectOneOutage(t, h, watchOutage, marks, killed, back)
	// An attempt waits up to half of what is left of the lease (5 s here):
	// whether the client is back inside it depends on its reconnect
	// backoff. A failed attempt is allowed, but once, and over.
	switch n := len(h.Vtepd.Entries(msgRenewFails)) - marks.renewal.starts; n {
	case 0:
	case 1:
		// Logged when the attempt gives up, which may be after etcd is
		// back: only its end is checked.
		if err := netns.Poll(10*time.Second, func() error {
			if len(h.Vtepd.Entries(msgRenewWorks)) == marks.renewal.ends {
				return errString("the failed renewal is not over")
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
	default:
		t.Errorf("%d renewal failures logged for one 3 s outage, want at most one", n)
	}
	checkOutageMetrics(t, h)
}

// modRevisionAndCreate returns a key's create revision: it changes only if
// the key was deleted and written again.
func modRevisionAndCreate(t *testing.T, c *clientv3.Client, key string) int64 {
	t.Helper()
	var rev int64
	err := netns.Poll(30*time.Second, func() error {
		resp, err := c.Get(ctxFor(t, 5*time.Second), key)
		if err != nil || len(resp.Kvs) != 1 {
			return fmt.Errorf("reading %s: %v", key, err)
		}
		rev = resp.Kvs[0].CreateRevision
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// TestOwnLease: this host's lease is put back when an operator deletes it,
// and vtepd stops with an error that says so when another host takes it.
func TestOwnLease(t *testing.T) {
	t.Parallel()
	o := newOverlay(t, "vtown", 2, 4)
	h1, h2 := o.hosts[0], o.hosts[1]
	c := etcdClient(t, o.lab)
	subnet := mustSubnet(t, h2)
	mine := leaseOf(t, o, subnet)

	t.Run("deleted by an operator", func(t *testing.T) {
		del(t, c, leaseKey(subnet))
		err := netns.Poll(5*time.Second, func() error {
			resp, err := c.Get(ctxFor(t, 5*time.Second), leaseKey(subnet))
			if err != nil || len(resp.Kvs) == 0 {
				return errStillThere
			}
			return nil
		})
		if err != nil {
			t.Fatalf("the deleted lease was not put back within 5s")
		}
		if back := leaseOf(t, o, subnet); !back.SameTarget(mine) {
			t.Errorf("lease put back as %v, want %v", back, mine)
		}
		// Peers dropped their entries with the delete; traffic resumes.
		firstPing(t, h1, h2.Container.Extra[0])
		if done, _ := h2.Vtepd.Exited(); done {
			t.Errorf("vtepd stopped after its lease was deleted")
		}
	})

	t.Run("rewritten by another writer", func(t *testing.T) {
		thief := fake{Subnet: subnet, PublicIP: mustAddr("198.51.100.222"), MAC: mine.VtepMAC}
		thief.MAC[5] ^= 0xff
		put(t, c, leaseKey(subnet), thief.Value())
		// A conflict, logged with both values; not ready; not an exit.
		err := netns.Poll(10*time.Second, func() error {
			if len(h2.Vtepd.Entries("own subnet is held by another writer in etcd; not ready, still answering from the lease table, and taking it back once it is free or ours again")) == 0 {
				return errString("no conflict logged yet")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		e := h2.Vtepd.Entries("own subnet is held by another writer in etcd; not ready, still answering from the lease table, and taking it back once it is free or ours again")[0]
		if !strings.Contains(e.Str("error"), "198.51.100.222") || !strings.Contains(e.Str("ours"), mine.PublicIP.String()) {
			t.Errorf("conflict log does not give both values: %v", e)
		}
		if code, body, err := h2.HTTPGet("/readyz"); err != nil || code != 503 || !strings.Contains(body, "held by another writer") {
			t.Errorf("readiness during the conflict: %d %q %v, want 503 naming the conflict", code, body, err)
		}
		// The data path goes on answering from the table. (A round trip
		// cannot work: the peers follow etcd, which sends h2's subnet to
		// the other writer.)
		h1MAC := leaseOf(t, o, mustSubnet(t, h1)).VtepMAC
		if err := installedFor(t, h2, h1.Container.Extra[0], h1MAC, 5*time.Second); err != nil {
			t.Errorf("a miss during the conflict: %v", err)
		}
		if done, _ := h2.Vtepd.Exited(); done {
			t.Fatalf("vtepd stopped on the conflict")
		}
		if got := leaseOf(t, o, subnet); got.PublicIP != thief.PublicIP {
			t.Errorf("the other writer's value was overwritten: %v", got)
		}

		// The key is freed: taken back at once, the same subnet, ready.
		del(t, c, leaseKey(subnet))
		err = netns.Poll(10*time.Second, func() error {
			resp, err := c.Get(ctxFor(t, 5*time.Second), leaseKey(subnet))
			if err != nil || len(resp.Kvs) == 0 {
				return errString("not taken back yet")
			}
			if back, err := store.ParseLease(store.SubnetKey(subnet), resp.Kvs[0].Value); err != nil || !back.SameTarget(mine) {
				return errString("not taken back yet")
			}
			if code, _, err := h2.HTTPGet("/readyz"); err != nil || code != 200 {
				return errString("not ready yet")
			}
			return nil
		})
		if err != nil {
			t.Fatalf("own lease after the key was freed: %v", err)
		}
		firstPing(t, h1, h2.Container.Extra[1])
	})
}
