package netns_test

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vtepd/vtepd/test/netns"
)

// TestFiftyAgentsAtOnce: agents that start together against one etcd all
// get distinct subnets (the compare-and-create transaction decides every
// race).
func TestFiftyAgentsAtOnce(t *testing.T) {
	t.Parallel()
	claimNeighbours(t, 104) // 50 hosts hold some 100 neighbour entries on the underlay
	const n = 50
	lab := newLab(t, "vtfifty")
	if _, err := lab.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	if err := lab.PutNetworkConfig(ctxFor(t, 10*time.Second), overlayConfig); err != nil {
		t.Fatal(err)
	}
	hosts := make([]*netns.Host, n)
	for i := range hosts {
		h, err := lab.AddHost()
		if err != nil {
			t.Fatal(err)
		}
		hosts[i] = h
	}
	// Start them all together, then wait.
	var wg sync.WaitGroup
	procs := make([]*netns.Process, n)
	errs := make([]error, n)
	for i, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			procs[i], errs[i] = h.StartVtepdNoWait()
		}()
	}
	wg.Wait()
	subnets := map[netip.Prefix]string{}
	for i, h := range hosts {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if err := h.WaitReady(procs[i], 60*time.Second); err != nil {
			t.Fatal(err)
		}
		s := mustSubnet(t, h)
		if other, dup := subnets[s]; dup {
			t.Errorf("%s and %s both hold %s", other, h.Name, s)
		}
		subnets[s] = h.Name
	}
	races := 0
	for _, h := range hosts {
		for _, e := range h.Vtepd.Entries("own lease acquired") {
			races += logInt(t, e, "attempt") - 1
		}
	}
	t.Logf("%d agents started at once: %d distinct subnets, %d lost races retried", n, len(subnets), races)
}

// TestSubnetExhaustion: when every subnet is leased, a new host says which
// network is full and how big it is, and waits instead of exiting; it takes
// the first subnet that frees up.
func TestSubnetExhaustion(t *testing.T) {
	t.Parallel()
	lab := newLab(t, "vtfull")
	if _, err := lab.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	// A /28 cut in /30s: 10.7.0.4, .8 and .12 (flannel skips the first).
	if err := lab.PutNetworkConfig(ctxFor(t, 10*time.Second), `{"Network":"10.7.0.0/28","SubnetLen":30,"Backend":{"Type":"vxlan"}}`); err != nil {
		t.Fatal(err)
	}
	var hosts []*netns.Host
	for range 4 {
		h, err := lab.AddHost()
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, h)
	}
	for _, h := range hosts[:3] {
		if _, err := h.StartVtepd(); err != nil {
			t.Fatal(err)
		}
	}
	last := hosts[3]
	p, err := last.StartVtepdNoWait()
	if err != nil {
		t.Fatal(err)
	}
	want := "network 10.7.0.0/28 has no free /30 subnet: all 3 between 10.7.0.4 and 10.7.0.12 are leased"
	err = netns.Poll(15*time.Second, func() error {
		for _, e := range p.Entries("acquiring a subnet lease failed; retrying") {
			if strings.Contains(e.Str("error"), want) && e.Str("level") == "error" {
				return nil
			}
		}
		return fmt.Errorf("no error saying %q:\n%s", want, p.Tail(5))
	})
	if err != nil {
		t.Fatal(err)
	}
	if done, err := p.Exited(); done {
		t.Fatalf("vtepd exited on a full network (%v); it must wait", err)
	}

	// A host leaves for good: its subnet goes to the waiting one.
	gone := mustSubnet(t, hosts[0])
	hosts[0].Vtepd.Kill()
	del(t, etcdClient(t, lab), leaseKey(gone))
	if err := last.WaitReady(p, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := mustSubnet(t, last); got != gone {
		t.Errorf("waiting host took %s, want the freed %s", got, gone)
	}
}
