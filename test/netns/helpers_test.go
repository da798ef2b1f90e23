package netns_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vtepd/vtepd/store"
	"github.com/vtepd/vtepd/test/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const prefix = "/coreos.com/network"

// etcdClient returns a client for the lab's etcd, closed with the test.
func etcdClient(t *testing.T, lab *netns.Lab) *clientv3.Client {
	t.Helper()
	c, err := lab.EtcdClient()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// leaseKey is the etcd key of a subnet's lease.
func leaseKey(subnet netip.Prefix) string {
	return store.SubnetsPrefix(prefix) + store.SubnetKey(subnet)
}

// fake is a lease for a host that does not exist: misses for its addresses
// are answered all the same, which is what the tests watch.
type fake struct {
	Subnet   netip.Prefix
	PublicIP netip.Addr
	MAC      store.MAC
}

func (f fake) Key() string { return leaseKey(f.Subnet) }

func (f fake) Value() string {
	return string(store.Lease{Subnet: f.Subnet, PublicIP: f.PublicIP, VtepMAC: f.MAC, VNI: 1}.Value())
}

// Addr returns the subnet's n-th address.
func (f fake) Addr(n int) netip.Addr {
	a := f.Subnet.Addr()
	for range n {
		a = a.Next()
	}
	return a
}

// newFakes returns n fake leases on /24s no lease in etcd holds yet, with
// public IPs on the underlay where nobody answers.
func newFakes(t *testing.T, c *clientv3.Client, n int) []fake {
	t.Helper()
	resp, err := c.Get(ctxFor(t, 10*time.Second), store.SubnetsPrefix(prefix), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	taken := map[netip.Prefix]bool{}
	for _, kv := range resp.Kvs {
		if p, err := store.ParseSubnetKey(strings.TrimPrefix(string(kv.Key), store.SubnetsPrefix(prefix))); err == nil {
			taken[p.Masked()] = true
		}
	}
	var out []fake
	for i := 250; i > 1 && len(out) < n; i-- {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i), 0}), 24)
		if taken[p] {
			continue
		}
		out = append(out, fake{
			Subnet:   p,
			PublicIP: netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}),
			MAC:      store.MAC{0x02, 0xfa, 0x4e, 0, 0, byte(i)},
		})
	}
	if len(out) < n {
		t.Fatalf("test bug: only %d free subnets", len(out))
	}
	return out
}

// put writes a key, retrying for a while: the tests' own client meets the
// same member failures and elections as vtepd does. Puts and deletes are
// idempotent, so a retry after an unclear failure is safe, and an attempt
// stuck on a member just killed is given up after two seconds rather than
// waited out.
func put(t *testing.T, c *clientv3.Client, key, value string, opts ...clientv3.OpOption) {
	t.Helper()
	err := netns.Poll(30*time.Second, func() error {
		_, err := c.Put(ctxFor(t, 2*time.Second), key, value, opts...)
		return err
	})
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func del(t *testing.T, c *clientv3.Client, key string) {
	t.Helper()
	err := netns.Poll(30*time.Second, func() error {
		_, err := c.Delete(ctxFor(t, 2*time.Second), key)
		return err
	})
	if err != nil {
		t.Fatalf("delete %s: %v", key, err)
	}
}

// kernelOn reads h's IPv4 device (flannel.1) or its IPv6 one (flannel-v6.1).
func kernelOn(h *netns.Host, ipv6 bool) (netns.Kernel, error) {
	if ipv6 {
		return h.Kernel6(device6)
	}
	return h.Kernel(device)
}

// touch sends one packet from h's container to addr, so that h's kernel
// asks about it; nobody need answer.
func touch(t *testing.T, h *netns.Host, addr netip.Addr) {
	t.Helper()
	if _, _, err := h.Container.Echo(addr, 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
}

// pointingAt returns h's neighbour and FDB entries that use mac, or hold an
// address of subnet.
func pointingAt(t *testing.T, h *netns.Host, mac store.MAC, subnet netip.Prefix) []string {
	t.Helper()
	return pointingAtOn(t, h, false, mac, subnet)
}

// pointingAtOn is pointingAt on h's IPv4 device or, ipv6, on its IPv6 one.
func pointingAtOn(t *testing.T, h *netns.Host, ipv6 bool, mac store.MAC, subnet netip.Prefix) []string {
	t.Helper()
	k, err := kernelOn(h, ipv6)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range k.Neighbours {
		if len(n.MAC) == 6 && (store.MAC(n.MAC) == mac || subnet.Contains(n.IP)) {
			out = append(out, fmt.Sprintf("neigh %s %s", n.IP, n.MAC))
		}
	}
	for _, f := range k.FDB {
		if store.MAC(f.MAC) == mac {
			out = append(out, fmt.Sprintf("fdb %s dst %s", f.MAC, f.Dst))
		}
	}
	return out
}

// installedFor polls until h holds a neighbour for addr pointing at mac and
// an FDB entry for mac, touching addr meanwhile.
func installedFor(t *testing.T, h *netns.Host, addr netip.Addr, mac store.MAC, timeout time.Duration) error {
	t.Helper()
	return netns.Poll(timeout, func() error {
		k, err := kernelOn(h, addr.Is6())
		if err != nil {
			return err
		}
		var neigh, fdb bool
		for _, n := range k.Neighbours {
			neigh = neigh || n.IP == addr && len(n.MAC) == 6 && store.MAC(n.MAC) == mac
		}
		for _, f := range k.FDB {
			fdb = fdb || store.MAC(f.MAC) == mac
		}
		if neigh && fdb {
			return nil
		}
		touch(t, h, addr)
		return fmt.Errorf("%s holds no entries for %s -> %s yet", h.Name, addr, mac)
	})
}

// goneWithin polls until h holds nothing for mac or subnet, and returns how
// long that took.
func goneWithin(t *testing.T, h *netns.Host, mac store.MAC, subnet netip.Prefix, timeout time.Duration) (time.Duration, error) {
	t.Helper()
	return goneWithinOn(t, h, false, mac, subnet, timeout)
}

// goneWithinOn is goneWithin on h's IPv4 device or, ipv6, on its IPv6 one.
func goneWithinOn(t *testing.T, h *netns.Host, ipv6 bool, mac store.MAC, subnet netip.Prefix, timeout time.Duration) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	var left []string
	err := netns.Poll(timeout, func() error {
		if left = pointingAtOn(t, h, ipv6, mac, subnet); len(left) > 0 {
			return fmt.Errorf("%s still holds %v", h.Name, left)
		}
		return nil
	})
	return time.Since(start), err
}

// firstPing pings addr once from h's container and fails t if it is lost.
func firstPing(t *testing.T, h *netns.Host, addr netip.Addr) {
	t.Helper()
	if ok, _, err := h.Container.Echo(addr, time.Second); err != nil || !ok {
		t.Errorf("first ping %s -> %s lost: %v", h.Name, addr, err)
	}
}

// countLog counts h's JSON log lines with message msg whose key field is
// value.
func countLog(h *netns.Host, msg, key, value string) int {
	n := 0
	for _, e := range h.Vtepd.Entries(msg) {
		if e.Str(key) == value {
			n++
		}
	}
	return n
}

// startFlow starts echo requests at 100/s from h's container to addr and
// waits until they are answered: traffic flowing, which the scenarios
// want before their event. The flow stops with the test at the latest.
func startFlow(t *testing.T, h *netns.Host, addr netip.Addr) *netns.Flow {
	t.Helper()
	f, err := h.Container.StartFlow(addr, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Stop() })
	if err := f.WaitReplies(20, 5*time.Second); err != nil {
		t.Fatalf("traffic before the event: %v", err)
	}
	return f
}

// stopFlowAfter waits for n more replies than the flow has had so far
// (traffic flowing again after the event), then stops it and returns its
// counts. A flow that never comes back fails within timeout.
func stopFlowAfter(t *testing.T, f *netns.Flow, n int, timeout time.Duration) netns.FlowResult {
	t.Helper()
	err := f.WaitReplies(n, timeout)
	res := f.Stop()
	if err != nil {
		t.Errorf("traffic after the event: %v (%d of %d answered)", err, res.Received, res.Sent)
	}
	return res
}

// logInt is the number under key in a vtepd log line; a line without it
// fails the test.
func logInt(t *testing.T, e netns.LogEntry, key string) int {
	t.Helper()
	v, ok := e[key].(float64)
	if !ok {
		t.Fatalf("log line %q has no number %q: %v", e.Str("msg"), key, e)
	}
	return int(v)
}
