package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vtepd/vtepd/store"
	"github.com/vtepd/vtepd/test/netns"
)

const defaultConfig = `{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}`

// firstPacket: the first ping to never-contacted addresses, cold against
// warm; the same with the least possible responder in vtepd's place, for the
// floor of this machine; and the daemon's own response time, on misses whose
// released packet wakes nobody in the lab.
func (b *bench) firstPacket() error {
	const perPair = 34 // 6 ordered pairs: 204 fresh destinations
	const floorN = 60
	// /20 subnets: room for the ping targets below and, in the upper half,
	// addresses that h2 drops unseen.
	o, err := b.newOverlay("vtbfp", `{"Network":"10.5.0.0/16","SubnetLen":20,"Backend":{"Type":"vxlan"}}`, 3, 2*perPair+2*floorN)
	if err != nil {
		return err
	}
	defer o.close()
	cmd := "make bench (firstpacket)"

	var diffs, colds, warms []time.Duration
	sent, ok := 0, 0
	for i, from := range o.hosts {
		for j, to := range o.hosts {
			if i == j {
				continue
			}
			// Each sender has its own block of the target's addresses:
			// never contacted by anyone else.
			k := i
			if i > j {
				k = i - 1
			}
			d, c, w, s, n := coldWarm(from, to.Container.Extra[k*perPair:(k+1)*perPair])
			diffs, colds, warms = append(diffs, d...), append(colds, c...), append(warms, w...)
			sent, ok = sent+s, ok+n
		}
	}
	b.add(row{Metric: fmt.Sprintf("first-packet success, %d fresh destinations", sent), Target: "100%", Measured: fmt.Sprintf("%.1f%%", float64(ok)/float64(sent)*100), Met: met(ok == sent), Command: cmd})
	med, p99 := percentile(diffs, 50), percentile(diffs, 99)
	b.add(row{Metric: "first ping: median (cold RTT - warm RTT)", Target: "<= 0.06 ms", Measured: ms(med), Met: met(med <= 60*time.Microsecond), Command: cmd})
	b.add(row{Metric: "first ping: p99 (cold RTT - warm RTT)", Target: "<= 0.25 ms", Measured: ms(p99), Met: met(p99 <= 250*time.Microsecond), Command: cmd})
	b.add(row{Metric: "first ping: median cold RTT / warm RTT", Measured: ms(percentile(colds, 50)) + " / " + ms(percentile(warms, 50)), Command: cmd})

	// vtepd's own share of a miss, over the least possible responder
	// (test/netns/cmd/minresponder: one blocking recvfrom, one neighbour
	// write from a ready buffer, no table, no FDB, no checks) in its place
	// on h1: the two answer h1's misses in turns, in interleaved rounds,
	// vtepd stopped with SIGSTOP (its entries stay) while minresponder
	// answers and the other way round, so that both meet the same machine.
	// On this 2-core VM, shared with the lab's other processes, the load
	// drifts within a run by more than the share being measured.
	h1, h2 := o.hosts[0], o.hosts[1]
	peer, err := o.lease(h2)
	if err != nil {
		return err
	}
	turns, err := b.newTurns(o, h1, peer.VtepMAC.String(), peer.Subnet)
	if err != nil {
		return err
	}
	defer turns.close()
	const rounds, batch = 6, floorN / 6
	cw := h2.Container.Extra[2*perPair:]
	var vd, fd []time.Duration
	fo, fs := 0, 0
	for r := range rounds {
		if err := turns.to(turns.vtepd); err != nil {
			return err
		}
		d, _, _, _, _ := coldWarm(h1, cw[r*batch:(r+1)*batch])
		vd = append(vd, d...)
		if err := turns.to(turns.floor); err != nil {
			return err
		}
		d, _, _, s, n := coldWarm(h1, cw[floorN+r*batch:floorN+(r+1)*batch])
		fd, fs, fo = append(fd, d...), fs+s, fo+n
	}
	if err := turns.to(turns.vtepd); err != nil {
		return err
	}
	vmed, fmed := percentile(vd, 50), percentile(fd, 50)
	b.add(row{Metric: fmt.Sprintf("floor: minimal responder in vtepd's place on h1 (%d of %d answered), in turns with vtepd: median / p99 (cold - warm)", fo, fs),
		Measured: ms(fmed) + " / " + ms(percentile(fd, 99)), Command: cmd + ": test/netns/cmd/minresponder"})
	b.add(row{Metric: fmt.Sprintf("vtepd's own share of a first ping: its median (cold - warm) %s less the floor's, same turns (%d and %d pings)", ms(vmed), len(vd), len(fd)),
		Target: "<= 0.010 ms", Measured: ms(vmed - fmed), Met: met(vmed-fmed <= 10*time.Microsecond), Command: cmd})
	if med > 60*time.Microsecond || p99 > 250*time.Microsecond {
		b.note("**First ping, cold minus warm.** vtepd over all pairs: median %s, p99 %s; in turns with the least possible "+
			"responder on h1, vtepd %s and the floor %s. Where the floor itself is above the target, no responder that waits "+
			"for the kernel's question can meet it on this machine: the first packet waits for the kernel to queue it and "+
			"multicast RTM_GETNEIGH, for the responder's thread to wake (on a 2-core VM that also runs both pinging "+
			"namespaces), for the write, and then travels. vtepd's own share is the difference, %s.",
			ms(med), ms(p99), ms(vmed), ms(fmed), ms(vmed-fmed))
	}

	// The daemon's own response time, in turns the same way: a datagram
	// every 5 ms to fresh addresses that h2 drops unseen, so that the
	// packet each answer releases wakes no process of the lab (which would
	// preempt the responder on this two-core machine and be counted as its
	// time). vtepd's addresses and the floor's are apart (the floor answers
	// only its own prefix, also for the misses it finds queued when it is
	// continued).
	if err := blackholeAbove(h2, peer.Subnet, 2048); err != nil {
		return err
	}
	base := u32(peer.Subnet.Addr())
	vtepdPaced := netip.PrefixFrom(addr(base+2048), peer.Subnet.Bits()+2)
	floorPaced := netip.PrefixFrom(addr(base+3072), peer.Subnet.Bits()+2)
	if err := turns.pacedFloor(floorPaced); err != nil {
		return err
	}
	const paced, pacedRounds = 300, 6
	pacedMisses := func(from netip.Addr, n int) error {
		out, err := h1.Container.Exec(b.bins.Burst, "--start", from.String(),
			"--count", strconv.Itoa(n), "--interval", "5ms")
		if err != nil {
			return fmt.Errorf("paced misses: %v: %s", err, out)
		}
		return nil
	}
	per := paced / pacedRounds
	for r := range pacedRounds {
		if err := turns.to(turns.vtepd); err != nil {
			return err
		}
		if err := pacedMisses(addr(u32(vtepdPaced.Addr())+uint32(r*per)), per); err != nil {
			return err
		}
		if err := turns.to(turns.floor); err != nil {
			return err
		}
		if err := pacedMisses(addr(u32(floorPaced.Addr())+uint32(r*per)), per); err != nil {
			return err
		}
	}
	if err := turns.to(turns.vtepd); err != nil {
		return err
	}
	time.Sleep(100 * time.Millisecond)
	lat, err := missLatencies(h1, vtepdPaced)
	if err != nil {
		return err
	}
	floor, err := turns.floorResult()
	if err != nil {
		return err
	}
	p50, p99 := percentile(lat, 50), percentile(lat, 99)
	pcmd := cmd + ": burst --interval 5ms, /debug/misses"
	b.add(row{Metric: fmt.Sprintf("in-daemon miss response p50 (%d paced misses, receipt to kernel ack)", len(lat)), Target: "<= 15 µs", Measured: us(p50), Met: met(p50 <= 15*time.Microsecond), Command: pcmd})
	b.add(row{Metric: "in-daemon miss response p99", Target: "<= 60 µs", Measured: us(p99), Met: met(p99 <= 60*time.Microsecond), Command: pcmd})
	b.add(row{Metric: fmt.Sprintf("floor: minimal responder's own receipt to kernel ack, same paced misses in turns with vtepd (%d answered): p50 / p99", floor.Answered),
		Measured: fmt.Sprintf("%.1f µs / %.1f µs", floor.P50US, floor.P99US), Command: cmd + ": test/netns/cmd/minresponder"})
	share := p50 - time.Duration(floor.P50US*float64(time.Microsecond))
	b.add(row{Metric: "vtepd's own share of a miss in the daemon: its p50 less the floor's, same turns", Target: "<= 10 µs", Measured: us(share),
		Met: met(share <= 10*time.Microsecond), Command: pcmd})
	if p50 > 15*time.Microsecond || p99 > 60*time.Microsecond {
		b.note("**In-daemon miss response.** vtepd: p50 %s, p99 %s; the minimal responder, timed the same way on the same "+
			"kind of misses in turns with vtepd: p50 %.1f µs, p99 %.1f µs. A neighbour write that resolves a queued packet sends that packet "+
			"inside the write: VXLAN encapsulation, the underlay veth and bridge and, because the lab's hosts share one "+
			"kernel, the peer's receive path up to its blackhole route all run in the writing syscall before the kernel's "+
			"ack. The same write with no packet queued takes about 3.5 µs (BenchmarkKernelWrites, in the Go rows above). "+
			"On real hosts the packet leaves through a NIC's queue and the peer's work is the peer's. What would close it "+
			"here: nothing in vtepd's control below the floor; vtepd's own share is the difference between the two rows.",
			us(p50), us(p99), floor.P50US, floor.P99US)
	}
	if firstShare, daemonShare := vmed-fmed, share; firstShare > 10*time.Microsecond || daemonShare > 10*time.Microsecond {
		b.note("%s", shareNote(firstShare, daemonShare))
	}
	return nil
}

// shareNote says which of the two share rows is short of issue 18's 10 µs
// and what was done and tried on the answer path. The figures named in it
// are from the commits that made each change (their messages have the
// commands); the two shares are this run's.
func shareNote(firstShare, daemonShare time.Duration) string {
	var short []string
	if firstShare > 10*time.Microsecond {
		short = append(short, fmt.Sprintf("of a first ping %s", ms(firstShare)))
	}
	if daemonShare > 10*time.Microsecond {
		short = append(short, fmt.Sprintf("in the daemon %s", us(daemonShare)))
	}
	return "**vtepd's own share of a miss.** Short of 10 µs this run: " + strings.Join(short, ", and ") + ". " +
		"The code between the read and the write is not where it goes: decoding, the lease lookup and choosing the " +
		"writes take a few hundred nanoseconds (BenchmarkHandle, kernel writes faked, in the rows above), and an " +
		"answer allocates nothing. " +
		"For a known peer both responders make the same three system calls from Go on a thread of their own (a " +
		"blocking recvfrom of the miss, one sendto of one PERMANENT neighbour entry, a recvfrom of the ack), and " +
		"the write costs the kernel the same. What the floor does not have is the rest of a daemon on the same two " +
		"cores: vtepd's etcd client, gRPC, HTTP server and timers, and a garbage collector with a heap to mark; " +
		"which of them the share is has not been separated, and the share moves between runs by about as much " +
		"as the target. Done, with what each measured: the listener owns an OS thread and sleeps in recvfrom on " +
		"the socket itself, not in the Go poller, so a miss wakes the thread that answers it (tens of µs per miss " +
		"through the poller); the first answer for a peer sends the FDB entry and the neighbour in one datagram, " +
		"acked once (4.5 µs against 7 µs for two writes, BenchmarkKernelWrites); a later address of a known peer " +
		"is answered with its neighbour entry alone after one FDB lookup (BenchmarkHandle 250-296 ns before, " +
		"233-271 ns after, commit be61d22); the floor is measured in turns with vtepd, so that both meet the same load. Tried by " +
		"hand and not kept, as neither moved the share beyond the spread between runs: raw system calls for the " +
		"reads and writes, and the listener's thread pinned to one CPU; their figures were not written down and " +
		"are not claimed here. Not tried: a real-time priority for the listener (to be off by default and " +
		"measured both ways, as issue 18 asks). What would close it: the next step is to separate the " +
		"candidates above (GOGC=off, GOMAXPROCS, the etcd client idle) in the same turns."
}

// coldWarm pings each target from from's container twice, one packet
// each: cold, the first packet to it, which waits on the miss; then warm.
// It returns the differences, cold and warm RTTs of the targets both
// reached, how many it tried and how many first pings were delivered.
func coldWarm(from *netns.Host, targets []netip.Addr) (diffs, colds, warms []time.Duration, sent, ok int) {
	for _, a := range targets {
		sent++
		cold, err := from.Container.Ping(a, "-c1", "-W1")
		if err != nil || cold.Received != 1 {
			continue
		}
		ok++
		warm, err := from.Container.Ping(a, "-c1", "-W1")
		if err != nil || warm.Received != 1 {
			continue
		}
		colds, warms = append(colds, cold.RTTs[0]), append(warms, warm.RTTs[0])
		diffs = append(diffs, cold.RTTs[0]-warm.RTTs[0])
	}
	return
}

// turns lets h1's vtepd and minresponder answer h1's misses in turns:
// whichever is not answering is stopped (SIGSTOP), and the one continued
// first drains what queued on its socket meanwhile.
type turns struct {
	b            *bench
	o            *overlay
	h            *netns.Host
	mac          string
	vtepd, floor *netns.Process
	current      *netns.Process
}

func (b *bench) newTurns(o *overlay, h *netns.Host, mac string, prefix netip.Prefix) (*turns, error) {
	t := &turns{b: b, o: o, h: h, mac: mac, vtepd: h.Vtepd, current: h.Vtepd}
	if err := t.startFloor("h1.minresponder", prefix); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *turns) startFloor(name string, prefix netip.Prefix) error {
	p, err := t.o.lab.Start(t.h.NS, name, t.b.bins.MinResponder, "--dev", "flannel.1", "--mac", t.mac, "--prefix", prefix.String())
	if err != nil {
		return err
	}
	time.Sleep(200 * time.Millisecond) // subscribed before it is stopped
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	t.floor = p
	return nil
}

// pacedFloor replaces the floor's responder with one for prefix alone.
func (t *turns) pacedFloor(prefix netip.Prefix) error {
	if err := t.to(t.vtepd); err != nil {
		return err
	}
	t.floor.Kill()
	return t.startFloor("h1.minresponder.paced", prefix)
}

// to lets p answer and stops the other.
func (t *turns) to(p *netns.Process) error {
	if t.current == p {
		return nil
	}
	if err := t.current.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	if err := p.Signal(syscall.SIGCONT); err != nil {
		return err
	}
	t.current = p
	time.Sleep(50 * time.Millisecond) // its backlog drained before the first timed miss
	return nil
}

type floorResult struct {
	Answered int     `json:"answered"`
	P50US    float64 `json:"p50_us"`
	P99US    float64 `json:"p99_us"`
}

// floorResult stops the floor's responder and reads its percentiles.
func (t *turns) floorResult() (floorResult, error) {
	var r floorResult
	t.floor.Signal(syscall.SIGCONT)
	t.floor.Signal(syscall.SIGTERM)
	if err := t.floor.Wait(5 * time.Second); err != nil {
		return r, fmt.Errorf("minresponder: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(t.floor.Log()), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		return r, fmt.Errorf("minresponder's result %q: %v", t.floor.Log(), err)
	}
	return r, nil
}

func (t *turns) close() {
	t.vtepd.Signal(syscall.SIGCONT)
	t.floor.Kill()
}

var pingStamp = regexp.MustCompile(`^\[(\d+\.\d+)\] \d+ bytes from`)

// join: a new host, reachable how long after its vtepd starts? A peer pings
// the new host's device address every 2 ms from before the start; the time
// runs from the start of the process to the first reply.
func (b *bench) join() error {
	// Three hosts, a fourth joining late with its container already there
	// (as Docker's would be, its bridge built from the subnet file of the
	// run before): the time from its vtepd's start until a container on the
	// first host has a reply from that container, and until it is ready.
	o, err := b.newOverlay("vtbjoin", defaultConfig, 3, 0)
	if err != nil {
		return err
	}
	defer o.close()
	h1 := o.hosts[0]
	target := netip.MustParsePrefix("10.5.77.0/24")
	for _, h := range o.hosts {
		if env, _ := h.Subnet(); env.Subnet.Masked() == target {
			target = netip.MustParsePrefix("10.5.78.0/24")
		}
	}
	h4, err := o.lab.AddHost()
	if err != nil {
		return err
	}
	h4.LogLevel = "info"
	hint := fmt.Sprintf("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=%s\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
		netip.PrefixFrom(target.Addr().Next(), target.Bits()))
	if err := os.WriteFile(h4.SubnetFile, []byte(hint), 0o644); err != nil {
		return err
	}
	c4, err := h4.AddContainer(0)
	if err != nil {
		return err
	}
	c, err := o.lab.EtcdClient()
	if err != nil {
		return err
	}
	defer c.Close()
	const runs = 10
	var joins, readies []time.Duration
	for run := range runs {
		if err := os.WriteFile(h4.SubnetFile, []byte(hint), 0o644); err != nil {
			return err
		}
		pinger, err := h1.Container.StartPing(fmt.Sprintf("h1.join-%d", run), c4.Addr, "-D", "-i", "0.002", "-W", "1", "-c", "2500")
		if err != nil {
			return err
		}
		time.Sleep(300 * time.Millisecond) // the peer is already sending, as in the scenario
		t0 := time.Now()
		p, err := h4.StartVtepdNoWait()
		if err != nil {
			return err
		}
		if err := h4.WaitReady(p, 20*time.Second); err != nil {
			return err
		}
		if ready := p.Entries("vtepd ready"); len(ready) > 0 {
			if ts, err := time.Parse("2006-01-02T15:04:05.000Z0700", ready[0].Str("ts")); err == nil {
				readies = append(readies, ts.Sub(t0))
			}
		}
		var first time.Time
		err = netns.Poll(3*time.Second, func() error {
			for _, l := range strings.Split(pinger.Log(), "\n") {
				if m := pingStamp.FindStringSubmatch(l); m != nil {
					f, _ := strconv.ParseFloat(m[1], 64)
					first = time.Unix(0, int64(f*1e9))
					return nil
				}
			}
			return fmt.Errorf("no reply from the new host's container yet")
		})
		pinger.Signal(syscall.SIGINT)
		pinger.Wait(5 * time.Second)
		if err != nil {
			return err
		}
		joins = append(joins, first.Sub(t0))
		// Take the host away again: process, lease, device (its container
		// and bridge stay, as a Docker host's would).
		p.Kill()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = c.Delete(ctx, "/coreos.com/network/subnets/"+strings.ReplaceAll(target.String(), "/", "-"))
		cancel()
		if err != nil {
			return err
		}
		h4.Exec("ip", "link", "del", "flannel.1")
		time.Sleep(500 * time.Millisecond) // h1 drops the old entries before the next run
	}
	med, ready := percentile(joins, 50), percentile(readies, 50)
	b.add(row{Metric: fmt.Sprintf("join: a container behind a new host answers a ping, after its vtepd starts (median of %d)", len(joins)),
		Target: "<= 0.10 s", Measured: fmt.Sprintf("%.3f s (min %.3f, max %.3f)", med.Seconds(), percentile(joins, 0).Seconds(), percentile(joins, 100).Seconds()),
		Met: met(med <= 100*time.Millisecond), Command: "make bench (join)"})
	b.add(row{Metric: fmt.Sprintf("join: vtepd start to ready, from exec under ip netns exec (median of %d)", len(readies)),
		Target: "<= 30 ms", Measured: fmt.Sprintf("%.1f ms (min %.1f, max %.1f)", ms64(ready), ms64(percentile(readies, 0)), ms64(percentile(readies, 100))),
		Met: met(ready <= 30*time.Millisecond), Command: "make bench (join)"})
	return nil
}

func ms64(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// storm: 10,000 fresh destinations in one burst, kernel limits raised.
func (b *bench) storm() error {
	restore, err := netns.RaiseNeighbourLimits(32768, 65536, 131072)
	if err != nil {
		return err
	}
	defer restore()
	const n = 10000
	o, peer, first, err := b.sinkOverlay("vtbstorm", `{"Network":"10.6.0.0/16","SubnetLen":18,"Backend":{"Type":"vxlan"}}`, 256)
	if err != nil {
		return err
	}
	defer o.close()
	h1 := o.hosts[0]
	return b.stormRows("", "make bench (storm)", h1, peer.Subnet, peer.VtepMAC, first, n)
}

// stormRows sends a storm of n datagrams from h1's container to addresses
// from first on, waits up to 10 s for each to be answered (an entry in
// subnet pointing at mac), and adds the storm rows, their metrics prefixed
// by label.
func (b *bench) stormRows(label, cmd string, h1 *netns.Host, subnet netip.Prefix, mac store.MAC, first netip.Addr, n int) error {
	t0 := time.Now()
	if err := b.burst(h1, first, n); err != nil {
		return err
	}
	sentIn := time.Since(t0)
	var at95, atAll time.Duration
	var atOne int
	for time.Since(t0) < 10*time.Second {
		got, err := resolved(h1, subnet, mac)
		if err != nil {
			return err
		}
		el := time.Since(t0)
		if el <= time.Second {
			atOne = got
		}
		if got >= n*95/100 && at95 == 0 {
			at95 = el
		}
		if got >= n {
			atAll = el
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	overflows, _ := metric(h1, "vtepd_netlink_overflows_total")
	swept, _ := metric(h1, "vtepd_sweep_answered_total")
	b.add(row{Metric: fmt.Sprintf("%smiss storm: %d destinations (sent in %v): answered within 1 s", label, n, sentIn.Round(time.Millisecond)), Target: ">= 95%",
		Measured: fmt.Sprintf("%.1f%% (95%% after %v)", float64(atOne)/float64(n)*100, at95.Round(time.Millisecond)), Met: met(atOne >= n*95/100), Command: cmd})
	all := "never (10 s)"
	if atAll > 0 {
		all = atAll.Round(time.Millisecond).String()
	}
	b.add(row{Metric: label + "miss storm: all answered", Target: "<= 3 s", Measured: all, Met: met(atAll > 0 && atAll <= 3*time.Second), Command: cmd})
	b.add(row{Metric: label + "miss storm: netlink overflows, and misses recovered by sweeps", Target: "none unrecovered",
		Measured: fmt.Sprintf("%.0f overflows, %.0f recovered", overflows, swept), Met: met(atAll > 0), Command: cmd})
	return nil
}

// economy: 2000 fresh destinations on one peer at the kernel's default
// table limit, in host and in address answer mode.
func (b *bench) economy() error {
	limits, err := netns.NeighbourLimits()
	if err != nil {
		return err
	}
	if limits[2] != "1024" {
		b.note("The answer-mode comparison ran with gc_thresh3=%s, not the default 1024.", limits[2])
	}
	const n = 2000
	o, _, first, err := b.sinkOverlay("vtbecon", `{"Network":"10.6.0.0/16","SubnetLen":20,"Backend":{"Type":"vxlan"}}`, 2048)
	if err != nil {
		return err
	}
	defer o.close()
	h1, h2 := o.hosts[0], o.hosts[1]
	for _, mode := range []string{"host", "address"} {
		h1.Vtepd.Kill()
		h1.Exec("ip", "neigh", "flush", "dev", "flannel.1")
		h1.Exec("ip", "route", "flush", "dev", "flannel.1")
		if _, err := h1.StartVtepd("--answer", mode); err != nil {
			return err
		}
		rx0, err := rxPackets(h2)
		if err != nil {
			return err
		}
		if err := b.burst(h1, first, n); err != nil {
			return err
		}
		// The kernel's three probes, one second apart, then it gives up.
		time.Sleep(4 * time.Second)
		rx1, err := rxPackets(h2)
		if err != nil {
			return err
		}
		k, err := h1.Kernel("flannel.1")
		if err != nil {
			return err
		}
		delivered := rx1 - rx0
		r := row{
			Metric:   fmt.Sprintf("--answer=%s, %d destinations on one peer, gc_thresh3=%s: delivered", mode, n, limits[2]),
			Measured: fmt.Sprintf("%d of %d (%.0f%%); %d neighbour entries", delivered, n, float64(delivered)/n*100, len(k.Neighbours)),
			Command:  "make bench (economy)",
		}
		if mode == "host" {
			r.Target, r.Met = "100%", met(delivered >= n)
		}
		b.add(r)
		// Let the kernel forget this run's entries before the next.
		h1.Exec("ip", "neigh", "flush", "dev", "flannel.1")
	}
	return nil
}

// scale: 50,000 leases in etcd; how fast does a starting vtepd hold them,
// and in how much memory?
func (b *bench) scale() error {
	const n = 50000
	lab, err := b.newLab("vtbscale")
	if err != nil {
		return err
	}
	o := &overlay{lab: lab}
	defer o.close()
	if _, err := lab.StartEtcd(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Seeded leases take 10.0.0.0-10.199.255.0; hosts pick above.
	if err := lab.PutNetworkConfig(ctx, `{"Network":"10.0.0.0/8","SubnetLen":24,"SubnetMin":"10.200.0.0","Backend":{"Type":"vxlan"}}`); err != nil {
		return err
	}
	seedArgs := []string{b.bins.Seed, "--endpoints", strings.Join(lab.Endpoints(), ","), "--count", strconv.Itoa(n),
		"--network", "10.0.0.0/8", "--start", "10.0.1.0"}
	seeder, err := lab.Start(lab.Underlay, "seed", seedArgs...)
	if err != nil {
		return err
	}
	if err := seeder.Wait(5 * time.Minute); err != nil {
		return fmt.Errorf("seeding %d leases: %v\n%s", n, err, seeder.Tail(5))
	}
	h, err := lab.AddHost()
	if err != nil {
		return err
	}
	h.LogLevel = "info"
	t0 := time.Now()
	p, err := h.StartVtepdNoWait()
	if err != nil {
		return err
	}
	if err := h.WaitReady(p, 60*time.Second); err != nil {
		return err
	}
	var loaded, ready time.Duration
	if e := p.Entries("lease table loaded"); len(e) > 0 {
		loaded = logTime(e[0]).Sub(t0)
	}
	if e := p.Entries("vtepd ready"); len(e) > 0 {
		ready = logTime(e[0]).Sub(t0)
	}
	time.Sleep(2 * time.Second) // steady state, as the target means it
	rss, hwm := procMem(p.Pid())
	cmd := "make bench (scale): seedleases --count 50000, then vtepd run"
	b.add(row{Metric: fmt.Sprintf("%d leases in etcd: table synced after vtepd starts", n), Target: "<= 1 s", Measured: fmt.Sprintf("%.3f s (ready after %.3f s)", loaded.Seconds(), ready.Seconds()), Met: met(loaded > 0 && loaded <= time.Second), Command: cmd})
	b.add(row{Metric: fmt.Sprintf("%d leases: vtepd RSS (peak during start)", n), Target: "<= 64 MiB", Measured: fmt.Sprintf("%.1f MiB (peak %.1f MiB)", rss, hwm), Met: met(rss <= 64), Command: cmd})
	return nil
}

func logTime(e netns.LogEntry) time.Time {
	t, _ := time.Parse("2006-01-02T15:04:05.000Z0700", e.Str("ts"))
	return t
}

// procMem reads a process's resident memory now and at its peak, in MiB.
func procMem(pid int) (rss, hwm float64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			hwm = kb / 1024
		}
	}
	return rss, hwm
}

// dataPlane: TCP throughput over the overlay against the underlay it runs
// on, and no fragmentation at the MTU the subnet file gives Docker.
func (b *bench) dataPlane() error {
	o, err := b.newOverlay("vtbdata", defaultConfig, 2, 0)
	if err != nil {
		return err
	}
	defer o.close()
	h1, h2 := o.hosts[0], o.hosts[1]
	env, err := h1.Subnet()
	if err != nil {
		return err
	}
	frag := func() (int, error) {
		total := 0
		for _, h := range []*netns.Host{h1, h2} {
			out, err := h.Exec("nstat", "-az", "IpFragCreates", "IpReasmReqds")
			if err != nil {
				return 0, err
			}
			for _, l := range strings.Split(out, "\n") {
				if f := strings.Fields(l); len(f) >= 2 && strings.HasPrefix(f[0], "Ip") {
					v, _ := strconv.Atoi(f[1])
					total += v
				}
			}
		}
		return total, nil
	}
	iperf := func(name, serverNS string, client *netns.Host, clientNS string, to netip.Addr) (float64, error) {
		srv, err := o.lab.Start(serverNS, name+".server", "iperf3", "-s", "-1")
		if err != nil {
			return 0, err
		}
		defer srv.Kill()
		var out string
		err = netns.Poll(5*time.Second, func() error {
			var err error
			out, err = client.Exec("ip", "netns", "exec", clientNS, "iperf3", "-c", to.String(), "-t", "5", "-J")
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("iperf3 to %s: %v\n%s", to, err, out)
		}
		var res struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			return 0, err
		}
		return res.End.SumReceived.BitsPerSecond / 1e9, nil
	}
	frag0, err := frag()
	if err != nil {
		return err
	}
	overlay, err := iperf("overlay", h2.Container.NS, h1, h1.Container.NS, h2.Container.Addr)
	if err != nil {
		return err
	}
	frag1, err := frag()
	if err != nil {
		return err
	}
	underlay, err := iperf("underlay", h2.NS, h1, h1.NS, h2.IP)
	if err != nil {
		return err
	}
	cmd := "make bench (dataplane): iperf3 -t 5, c1 -> c2 and h1 -> h2"
	b.add(row{Metric: "TCP throughput: overlay / underlay veth", Measured: fmt.Sprintf("%.2f / %.2f Gbit/s = %.2f", overlay, underlay, overlay/underlay), Command: cmd})
	big := env.MTU - 28
	okBig, _ := h1.Container.Ping(h2.Container.Addr, "-c1", "-W1", "-M", "do", "-s", strconv.Itoa(big))
	tooBig, _ := h1.Container.Ping(h2.Container.Addr, "-c1", "-W1", "-M", "do", "-s", strconv.Itoa(big+1))
	noFrag := frag1 == frag0 && okBig.Received == 1 && tooBig.Received == 0
	b.add(row{Metric: fmt.Sprintf("no fragmentation at FLANNEL_MTU=%d", env.MTU), Target: "none",
		Measured: fmt.Sprintf("DF ping of %d bytes %s, of %d %s; %d IP fragments during the overlay run", big+28, passFail(okBig.Received == 1), big+29, refused(tooBig.Received == 0), frag1-frag0),
		Met:      met(noFrag), Command: "ping -M do -s MTU-28 and MTU-27; nstat IpFragCreates IpReasmReqds"})
	return nil
}

func passFail(ok bool) string {
	if ok {
		return "crosses"
	}
	return "LOST"
}

func refused(ok bool) string {
	if ok {
		return "refused"
	}
	return "CROSSED"
}
