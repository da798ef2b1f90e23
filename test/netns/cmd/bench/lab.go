package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/vtepd/vtepd/store"
	"github.com/vtepd/vtepd/test/netns"
	"golang.org/x/sys/unix"
)

// overlay is a lab with etcd, a network config and hosts running vtepd.
type overlay struct {
	lab   *netns.Lab
	hosts []*netns.Host
	// env is added to each host's vtepd environment (bench.vtepdEnv).
	env []string
}

// newOverlay starts a lab with etcd and config, and n hosts whose vtepd logs
// at info and gets args, each with a container holding extra addresses.
func (b *bench) newOverlay(name, config string, n, extra int, args ...string) (*overlay, error) {
	return b.overlayOf(name, config, n, func(o *overlay) (*netns.Host, error) { return o.addHost(extra, args...) })
}

// newOverlay6 is newOverlay for a config with IPv6: its hosts have an IPv6
// underlay address too when v6Underlay is set, and their containers extra
// addresses of each family the config enables.
func (b *bench) newOverlay6(name, config string, v6Underlay bool, n, extra int) (*overlay, error) {
	return b.overlayOf(name, config, n, func(o *overlay) (*netns.Host, error) { return o.addHost6(v6Underlay, extra) })
}

func (b *bench) overlayOf(name, config string, n int, add func(*overlay) (*netns.Host, error)) (*overlay, error) {
	lab, err := b.newLab(name)
	if err != nil {
		return nil, err
	}
	o := &overlay{lab: lab, env: b.vtepdEnv}
	if _, err := lab.StartEtcd(); err != nil {
		o.close()
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := lab.PutNetworkConfig(ctx, config); err != nil {
		o.close()
		return nil, err
	}
	for range n {
		if _, err := add(o); err != nil {
			o.close()
			return nil, err
		}
	}
	return o, nil
}

func (o *overlay) close() { o.lab.Close() }

func (o *overlay) addHost(extra int, args ...string) (*netns.Host, error) {
	h, err := o.lab.AddHost()
	if err != nil {
		return nil, err
	}
	h.LogLevel = "info"
	h.Env = append(h.Env, o.env...)
	if _, err := h.StartVtepd(args...); err != nil {
		return nil, err
	}
	if extra >= 0 {
		if _, err := h.AddContainer(extra); err != nil {
			return nil, err
		}
	}
	o.hosts = append(o.hosts, h)
	return h, nil
}

func (o *overlay) addHost6(v6Underlay bool, extra int) (*netns.Host, error) {
	h, err := o.lab.AddHost6(v6Underlay)
	if err != nil {
		return nil, err
	}
	h.LogLevel = "info"
	h.Env = append(h.Env, o.env...)
	if _, err := h.StartVtepd(); err != nil {
		return nil, err
	}
	if _, err := h.AddContainerDual(extra); err != nil {
		return nil, err
	}
	o.hosts = append(o.hosts, h)
	return h, nil
}

// lease reads h's lease from etcd.
func (o *overlay) lease(h *netns.Host) (store.Lease, error) {
	env, err := h.Subnet()
	if err != nil {
		return store.Lease{}, err
	}
	c, err := o.lab.EtcdClient()
	if err != nil {
		return store.Lease{}, err
	}
	defer c.Close()
	elem := store.LeaseKey(env.Subnet.Masked(), env.IPv6Subnet.Masked())
	key := store.SubnetsPrefix("/coreos.com/network") + elem
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		return store.Lease{}, fmt.Errorf("reading %s: %v", key, err)
	}
	l, err := store.ParseLease(elem, resp.Kvs[0].Value)
	l.Key = key
	return l, err
}

// resolved counts h's neighbour entries in subnet that point at mac, on
// the VXLAN device of subnet's family.
func resolved(h *netns.Host, subnet netip.Prefix, mac store.MAC) (int, error) {
	kernel := func() (netns.Kernel, error) { return h.Kernel("flannel.1") }
	if subnet.Addr().Is6() {
		kernel = func() (netns.Kernel, error) { return h.Kernel6("flannel-v6.1") }
	}
	k, err := kernel()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range k.Neighbours {
		if subnet.Contains(e.IP) && len(e.MAC) == 6 && store.MAC(e.MAC) == mac && e.State&(unix.NUD_INCOMPLETE|unix.NUD_FAILED) == 0 {
			n++
		}
	}
	return n, nil
}

// rxPackets is the count of packets h's VXLAN device has received.
func rxPackets(h *netns.Host) (int, error) {
	b, err := h.Exec("cat", "/sys/class/net/flannel.1/statistics/rx_packets")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(b))
}

// burst sends one datagram from h's container to each of count addresses
// from start on.
func (b *bench) burst(h *netns.Host, start netip.Addr, count int) error {
	out, err := h.Container.Exec(b.bins.Burst, "--start", start.String(), "--count", strconv.Itoa(count))
	if err != nil {
		return err
	}
	var s struct{ Sent, Errors int }
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		return fmt.Errorf("burst output %q: %v", out, err)
	}
	if s.Errors > 0 {
		// Unsent destinations are never answered: they count against
		// vtepd in the figures, and the note says why.
		b.note("A burst of %d from %s sent %d; the kernel refused %d at send.", count, start, s.Sent, s.Errors)
	}
	return nil
}

// sinkOverlay makes a two-host overlay whose second host drops, unseen,
// what is sent to its subnet from offset on (blackholeAbove), and returns
// that host's lease and the first such address: a burst's destinations.
func (b *bench) sinkOverlay(name, config string, offset int) (*overlay, store.Lease, netip.Addr, error) {
	o, err := b.newOverlay(name, config, 2, 2)
	if err != nil {
		return nil, store.Lease{}, netip.Addr{}, err
	}
	peer, err := o.lease(o.hosts[1])
	if err == nil {
		err = blackholeAbove(o.hosts[1], peer.Subnet, offset)
	}
	if err != nil {
		o.close()
		return nil, store.Lease{}, netip.Addr{}, err
	}
	return o, peer, addr(u32(peer.Subnet.Addr()) + uint32(offset)), nil
}

// blackholeAbove makes h drop, after its VXLAN device has counted them,
// packets for every address of subnet from offset on: a burst to thousands
// of absent containers would otherwise fill the kernel-wide neighbour table
// with h's ARP attempts on its container bridge.
func blackholeAbove(h *netns.Host, subnet netip.Prefix, offset int) error {
	a := u32(subnet.Addr()) + uint32(offset)
	end := u32(subnet.Addr()) + uint32(1)<<(32-subnet.Bits())
	for a < end {
		// The largest block that starts at a, aligned, and ends by end.
		bits := 32
		for bits > subnet.Bits() {
			size := uint32(1) << (32 - (bits - 1))
			if a%size != 0 || a+size > end {
				break
			}
			bits--
		}
		p := netip.PrefixFrom(addr(a), bits)
		if _, err := h.Exec("ip", "route", "add", "blackhole", p.String()); err != nil {
			return err
		}
		a += uint32(1) << (32 - bits)
	}
	return nil
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// metric reads one sample from h's /metrics: the line that starts with
// name (labels included, as printed).
func metric(h *netns.Host, name string) (float64, error) {
	_, body, err := h.HTTPGet("/metrics")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(l, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(rest), 64)
		}
	}
	return 0, fmt.Errorf("no %s in /metrics", name)
}

// missLatencies returns the response times of h's recent answered misses
// for addresses in within.
func missLatencies(h *netns.Host, within netip.Prefix) ([]time.Duration, error) {
	_, body, err := h.HTTPGet("/debug/misses?n=512")
	if err != nil {
		return nil, err
	}
	var misses []struct {
		IP        string
		Outcome   string
		LatencyUS float64 `json:"latency_us"`
	}
	if err := json.Unmarshal([]byte(body), &misses); err != nil {
		return nil, err
	}
	var out []time.Duration
	for _, m := range misses {
		ip, err := netip.ParseAddr(m.IP)
		if m.Outcome == "answered" && err == nil && within.Contains(ip) {
			out = append(out, time.Duration(m.LatencyUS*float64(time.Microsecond)))
		}
	}
	return out, nil
}
