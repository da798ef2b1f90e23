package main

import (
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/vtepd/vtepd/test/netns"
)

// dualStackBenchConfig is firstpacket's config with an IPv6 part: /20s for
// IPv4, so that the paced misses' addresses fit above the ping targets, and
// flannel's default /64s for IPv6.
const dualStackBenchConfig = `{"Network":"10.5.0.0/16","SubnetLen":20,"EnableIPv6":true,"IPv6Network":"fd00:10::/48","Backend":{"Type":"vxlan"}}`

// firstPacket6 is firstpacket for IPv6, beside IPv4 in the same lab: a
// dual-stack overlay over a dual-stack underlay (each family's VXLAN
// packets over its own underlay family, as flannel sends them), in which
// every first ping and every paced miss of one family is interleaved with
// one of the other, so that both meet the same machine. It has no floor
// rows: the minimal responder answers ARP misses only.
func (b *bench) firstPacket6() error {
	const perPair = 34 // per family, 6 ordered pairs: 204 fresh destinations
	o, err := b.newOverlay6("vtbfp6", dualStackBenchConfig, true, 3, 2*perPair)
	if err != nil {
		return err
	}
	defer o.close()
	cmd := "make bench (firstpacket6)"

	type family struct {
		diffs, colds, warms []time.Duration
		sent, ok            int
	}
	var v4, v6 family
	add := func(f *family, from *netns.Host, targets []netip.Addr) {
		d, c, w, s, n := coldWarm(from, targets)
		f.diffs, f.colds, f.warms = append(f.diffs, d...), append(f.colds, c...), append(f.warms, w...)
		f.sent, f.ok = f.sent+s, f.ok+n
	}
	for i, from := range o.hosts {
		for j, to := range o.hosts {
			if i == j {
				continue
			}
			k := i // each sender its own block of the target's addresses
			if i > j {
				k = i - 1
			}
			// In pairs of one address of each family, IPv6 first.
			for n := k * perPair; n < (k+1)*perPair; n++ {
				add(&v6, from, to.Container.Extra6[n:n+1])
				add(&v4, from, to.Container.Extra[n:n+1])
			}
		}
	}
	med, p99 := percentile(v6.diffs, 50), percentile(v6.diffs, 99)
	b.add(row{Metric: fmt.Sprintf("IPv6 first-packet success, %d fresh destinations (dual-stack lab, IPv6 underlay)", v6.sent), Target: "100%",
		Measured: fmt.Sprintf("%.1f%%", float64(v6.ok)/float64(v6.sent)*100), Met: met(v6.ok == v6.sent), Command: cmd})
	b.add(row{Metric: "IPv6 first ping: median (cold RTT - warm RTT)", Target: "<= 0.06 ms", Measured: ms(med), Met: met(med <= 60*time.Microsecond), Command: cmd})
	b.add(row{Metric: "IPv6 first ping: p99 (cold RTT - warm RTT)", Target: "<= 0.25 ms", Measured: ms(p99), Met: met(p99 <= 250*time.Microsecond), Command: cmd})
	b.add(row{Metric: "IPv6 first ping: median cold RTT / warm RTT", Measured: ms(percentile(v6.colds, 50)) + " / " + ms(percentile(v6.warms, 50)), Command: cmd})
	b.add(row{Metric: fmt.Sprintf("IPv4 beside it, same lab, interleaved (%d of %d delivered): median / p99 (cold - warm)", v4.ok, v4.sent),
		Measured: ms(percentile(v4.diffs, 50)) + " / " + ms(percentile(v4.diffs, 99)), Command: cmd})

	// The daemon's own response time, per family: a datagram every 5 ms to
	// fresh addresses that h2 drops unseen (as firstpacket's paced misses,
	// and for the same reason), in rounds of one family then the other.
	h1, h2 := o.hosts[0], o.hosts[1]
	peer, err := o.lease(h2)
	if err != nil {
		return err
	}
	if err := blackholeAbove(h2, peer.Subnet, 2048); err != nil {
		return err
	}
	paced4 := netip.PrefixFrom(addr(u32(peer.Subnet.Addr())+2048), peer.Subnet.Bits()+1)
	// A /96 far above the containers' addresses, at <the /64>::1:0:0.
	a := peer.IPv6Subnet.Addr().As16()
	a[11] = 1
	paced6 := netip.PrefixFrom(netip.AddrFrom16(a), 96)
	if _, err := h2.Exec("ip", "-6", "route", "add", "blackhole", paced6.String()); err != nil {
		return err
	}
	// Rounds of 64 misses a family, each round's addresses one aligned
	// block, read from /debug/misses after its round: the ring of recent
	// misses holds 512, fewer than both families' in all.
	const per, rounds = 64, 5
	pacedMisses := func(block netip.Prefix) ([]time.Duration, error) {
		out, err := h1.Container.Exec(b.bins.Burst, "--start", block.Addr().String(), "--count", strconv.Itoa(per), "--interval", "5ms")
		if err != nil {
			return nil, fmt.Errorf("paced misses to %s: %v: %s", block, err, out)
		}
		var lat []time.Duration
		netns.Poll(time.Second, func() error {
			if lat, err = missLatencies(h1, block); err == nil && len(lat) < per {
				err = fmt.Errorf("%d of %d answers to %s recorded", len(lat), per, block)
			}
			return err
		})
		return lat, err
	}
	var lat6, lat4 []time.Duration
	for r := range rounds {
		l6, err := pacedMisses(netip.PrefixFrom(plus(paced6.Addr(), (r+1)*per), 128-6))
		if err != nil {
			return err
		}
		l4, err := pacedMisses(netip.PrefixFrom(plus(paced4.Addr(), r*per), 32-6))
		if err != nil {
			return err
		}
		lat6, lat4 = append(lat6, l6...), append(lat4, l4...)
	}
	pcmd := cmd + ": burst --interval 5ms, /debug/misses"
	p50, p99 := percentile(lat6, 50), percentile(lat6, 99)
	b.add(row{Metric: fmt.Sprintf("IPv6 in-daemon miss response p50 (%d paced misses, receipt to kernel ack)", len(lat6)), Target: "<= 15 µs", Measured: us(p50), Met: met(p50 <= 15*time.Microsecond), Command: pcmd})
	b.add(row{Metric: "IPv6 in-daemon miss response p99", Target: "<= 60 µs", Measured: us(p99), Met: met(p99 <= 60*time.Microsecond), Command: pcmd})
	b.add(row{Metric: fmt.Sprintf("IPv4 beside it, same rounds (%d paced misses): p50 / p99", len(lat4)),
		Measured: us(percentile(lat4, 50)) + " / " + us(percentile(lat4, 99)), Command: pcmd})
	b.note("**IPv6 beside IPv4.** In one dual-stack lab, interleaved: first ping cold minus warm, median %s for IPv6 and %s "+
		"for IPv4; in-daemon response p50 %s and %s. The targets are IPv4's, and what keeps IPv4 from them (the floor "+
		"of this machine, in firstpacket's notes) is the same for IPv6: the difference between the families is what "+
		"answering ND rather than ARP costs.",
		ms(med), ms(percentile(v4.diffs, 50)), us(p50), us(percentile(lat4, 50)))
	return nil
}

// storm6 is storm for IPv6: an IPv6-only overlay over an IPv6 underlay,
// 10000 datagrams from h1's container to fresh addresses of h2's /64 that
// h2 drops unseen, each one an ND miss on h1.
func (b *bench) storm6() error {
	restore, err := netns.RaiseNeighbourLimits(32768, 65536, 131072)
	if err != nil {
		return err
	}
	defer restore()
	const n = 10000
	o, err := b.newOverlay6("vtbstorm6", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/48","Backend":{"Type":"vxlan"}}`, true, 2, 2)
	if err != nil {
		return err
	}
	defer o.close()
	h1, h2 := o.hosts[0], o.hosts[1]
	peer, err := o.lease(h2)
	if err != nil {
		return err
	}
	a := peer.IPv6Subnet.Addr().As16()
	a[11] = 1
	sink := netip.PrefixFrom(netip.AddrFrom16(a), 96)
	if _, err := h2.Exec("ip", "-6", "route", "add", "blackhole", sink.String()); err != nil {
		return err
	}
	return b.stormRows("IPv6 ", "make bench (storm6)", h1, sink, peer.VtepMACv6, sink.Addr().Next(), n)
}

// plus returns a advanced by n addresses.
func plus(a netip.Addr, n int) netip.Addr {
	for range n {
		a = a.Next()
	}
	return a
}
