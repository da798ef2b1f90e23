package netns_test

import (
	"fmt"
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/vtepd/vtepd/test/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestEtcdCluster: etcd as production runs it, three members each on a
// machine of its own (a lab namespace on the underlay bridge), every
// vtepd given all three endpoints. Losing any one member, the leader
// included, and a partition that cuts one vtepd host off from the
// majority, cost no established traffic and no lease: misses are answered
// from the table meanwhile, the outage is logged once on the host cut off,
// and its table catches up when the partition heals, the events it missed
// included.
//
// Raft runs with a 50 ms heartbeat and a 500 ms election timeout, so that
// a new leader is elected, and a member cut off from the others stops
// serving watches that require a leader (three election timeouts), within
// a second or two. h1 and h2 hold 10 s leases, renewed every 5 s, so that
// their renewals meet the members' loss, and the member without a leader
// during the partition. h3, the host cut off, holds a 120 s lease: vtepd
// notices a member that silently stopped answering only through gRPC's
// keepalive (a ping after 10 s without traffic, given 5 s), so that the
// partition may last some 20 s before h3 logs it, wherever its watch
// stream was, and h3's lease outlives that with room to spare, a renewal
// due meanwhile included.
func TestEtcdCluster(t *testing.T) {
	t.Parallel()
	claimNeighbours(t, 88) // 78 at the peak, run alone: the hosts' underlay neighbours (members, hosts, the fakes' public IPs) and their answers
	lab := newLab(t, "vtquorum")
	members, err := lab.StartEtcdClusterWith(3, netns.EtcdOptions{
		OwnNamespaces: true, HeartbeatInterval: 50 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatalf("starting a 3-member etcd: %v", err)
	}
	if err := lab.PutNetworkConfig(ctxFor(t, 10*time.Second), overlayConfig); err != nil {
		t.Fatal(err)
	}
	o := &overlay{lab: lab}
	h1 := o.addHost(t, 2, "--subnet-lease-ttl", "10s")
	h2 := o.addHost(t, 2, "--subnet-lease-ttl", "10s")
	h3 := o.addHost(t, 2, "--subnet-lease-ttl", "120s")
	c := etcdClient(t, lab)
	fakes := newFakes(t, c, 5)
	own := map[*netns.Host]ownLease{}
	for _, h := range o.hosts {
		own[h] = ownLeaseOf(t, c, h)
	}

	t.Run("each member lost in turn", func(t *testing.T) {
		// Established traffic both ways between h1 and h2, and to h3.
		flows := []*netns.Flow{
			startFlow(t, h1, h2.Container.Addr),
			startFlow(t, h2, h3.Container.Addr),
		}
		leader := etcdLeader(t, lab)
		order := []*netns.Etcd{leader}
		for _, m := range members {
			if m != leader {
				order = append(order, m)
			}
		}
		for i, m := range order {
			wasLeader := etcdLeader(t, lab) == m
			marks := markAll(o.hosts)
			m.Kill()
			killed := time.Now()
			f := fakes[i]
			put(t, c, f.Key(), f.Value())
			var slowest time.Duration
			for _, h := range o.hosts {
				start := time.Now()
				if err := installedFor(t, h, f.Addr(5), f.MAC, 10*time.Second); err != nil {
					t.Errorf("%s down: a lease put meanwhile: %v", m.Name, err)
				}
				slowest = max(slowest, time.Since(start))
			}
			del(t, c, f.Key())
			for _, h := range o.hosts {
				if _, err := goneWithin(t, h, f.MAC, f.Subnet, 10*time.Second); err != nil {
					t.Errorf("%s down: a lease deleted meanwhile: %v", m.Name, err)
				}
			}
			if err := m.Start(); err != nil {
				t.Fatal(err)
			}
			if err := lab.WaitMember(m, 30*time.Second); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s (leader: %v) down for %v: the put answered on every host within %v of the last",
				m.Name, wasLeader, time.Since(killed).Round(time.Millisecond), slowest.Round(time.Millisecond))
			logOutages(t, o.hosts, marks)
		}
		stopFlowsLosingNothing(t, flows, "the loss of each member in turn")
	})

	t.Run("a host cut off from the majority", func(t *testing.T) {
		// The partition: h3 and one member on one side, the two other
		// members on the other; the hosts' data path crosses it untouched,
		// and h1 and h2 still reach all three members. The member cut off
		// is the leader: the majority elects another, and the old one,
		// hearing from neither, steps down and stays without a leader.
		iso := etcdLeader(t, lab)
		var majority []*netns.Etcd
		for _, m := range members {
			if m != iso {
				majority = append(majority, m)
			}
		}
		far := []netip.Addr{majority[0].Addr, majority[1].Addr}
		// A lease h3 answers from before the partition, deleted during it.
		gone, fresh := fakes[3], fakes[4]
		put(t, c, gone.Key(), gone.Value())
		for _, h := range o.hosts {
			if err := installedFor(t, h, gone.Addr(5), gone.MAC, 10*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		flows := []*netns.Flow{
			startFlow(t, h3, h1.Container.Addr),
			startFlow(t, h2, h3.Container.Extra[0]),
		}
		marks := markAll(o.hosts)
		renewed := func(h *netns.Host) int { return len(h.Vtepd.Entries("own lease renewed")) }
		renewals := map[*netns.Host]int{h1: renewed(h1), h2: renewed(h2)}
		began := time.Now()
		cuts := []*netns.Cut{}
		for _, ns := range []string{h3.NS, iso.NS} {
			cut, err := lab.Cut(ns, far...)
			if err != nil {
				t.Fatal(err)
			}
			cuts = append(cuts, cut)
		}
		healed := false
		heal := func() {
			if healed {
				return
			}
			healed = true
			for _, cut := range cuts {
				if err := cut.Heal(); err != nil {
					t.Error(err)
				}
			}
		}
		t.Cleanup(heal)
		// The majority goes on: the events reach h1 and h2.
		del(t, c, gone.Key())
		put(t, c, fresh.Key(), fresh.Value())
		for _, h := range []*netns.Host{h1, h2} {
			if _, err := goneWithin(t, h, gone.MAC, gone.Subnet, 10*time.Second); err != nil {
				t.Errorf("the majority's delete: %v", err)
			}
			if err := installedFor(t, h, fresh.Addr(5), fresh.MAC, 10*time.Second); err != nil {
				t.Errorf("the majority's put: %v", err)
			}
		}
		// Cut off until h3 says so, however its watch learns (its member
		// has no leader; or the keepalive of its connection to a member
		// beyond the cut fails, within 15 s), and until h1 and h2 have
		// renewed their leases twice with a member that has no leader
		// among those they ask.
		err := netns.Poll(45*time.Second, func() error {
			if len(h3.Vtepd.Entries(msgWatchLost)) == marks[h3].watch.starts {
				return errString("h3 logged no outage yet")
			}
			for h, n := range renewals {
				if renewed(h) < n+2 {
					return fmt.Errorf("%s renewed its lease %d times", h.Name, renewed(h)-n)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("h3 cut off from the majority for %v: %v", time.Since(began).Round(time.Millisecond), err)
		}
		noticed := logTime(t, h3.Vtepd.Entries(msgWatchLost)[marks[h3].watch.starts]).Sub(began)
		// Meanwhile h3 has applied neither event: the cut cuts.
		if err := installedFor(t, h3, fresh.Addr(5), fresh.MAC, time.Second); err == nil {
			t.Fatalf("h3 answered for a lease put beyond the partition: the cut did not cut")
		}
		if len(pointingAt(t, h3, gone.MAC, gone.Subnet)) == 0 {
			t.Fatalf("h3 dropped, while cut off, a lease deleted beyond the partition: the cut did not cut, or h3 did not keep its table")
		}
		cutFor := time.Since(began)
		heal()
		healedAt := time.Now()
		if err := lab.WaitMember(iso, 30*time.Second); err != nil {
			t.Error(err)
		}
		rejoined := time.Since(healedAt)
		// The table catches up: the delete and the put it missed.
		if _, err := goneWithin(t, h3, gone.MAC, gone.Subnet, 30*time.Second); err != nil {
			t.Errorf("the delete made during the partition, after it healed: %v", err)
		}
		tookGone := time.Since(healedAt)
		if err := installedFor(t, h3, fresh.Addr(5), fresh.MAC, 30*time.Second); err != nil {
			t.Errorf("the put made during the partition, after it healed: %v", err)
		}
		tookFresh := time.Since(healedAt)
		t.Logf("h3 cut off from %s and %s, with %s: outage logged after %v, healed after %v; %s had a leader again %v after, h3 applied the missed delete %v after, the missed put %v after",
			majority[0].Name, majority[1].Name, iso.Name, noticed.Round(time.Millisecond), cutFor.Round(time.Millisecond),
			iso.Name, rejoined.Round(time.Millisecond), tookGone.Round(time.Millisecond), tookFresh.Round(time.Millisecond))
		expectOneOutage(t, h3, watchOutage, marks[h3], began, healedAt)
		logOutages(t, o.hosts, marks)
		stopFlowsLosingNothing(t, flows, "a partition of h3 from the etcd majority")
		firstPing(t, h1, h3.Container.Extra[1])
	})

	// No host lost its lease, not even for a moment: the key is the one
	// written at the start, bound to the same etcd lease, alive.
	for _, h := range o.hosts {
		now := ownLeaseOf(t, c, h)
		if now.create != own[h].create || now.lease != own[h].lease {
			t.Errorf("%s's lease was written again (create revision %d, etcd lease %x; at the start %d, %x)",
				h.Name, now.create, now.lease, own[h].create, own[h].lease)
		}
		ttl, err := c.TimeToLive(ctxFor(t, 5*time.Second), clientv3.LeaseID(now.lease))
		if err != nil || ttl.TTL <= 0 {
			t.Errorf("%s's etcd lease %x: TTL %v, %v", h.Name, now.lease, ttl, err)
		}
		if n := len(h.Vtepd.Entries("own lease vanished from etcd (deleted, or expired during an outage); taking the subnet again")); n > 0 {
			t.Errorf("%s saw its lease vanish %d times", h.Name, n)
		}
		checkOutageMetrics(t, h)
	}
}

// stopFlowsLosingNothing stops the flows once they have flowed a second
// more, and fails t for each request of theirs that was lost across what
// happened meanwhile.
func stopFlowsLosingNothing(t *testing.T, flows []*netns.Flow, across string) {
	t.Helper()
	for i, f := range flows {
		res := stopFlowAfter(t, f, 100, 10*time.Second)
		t.Logf("flow %d: %d of %d lost at 100/s across %s", i, len(res.Lost), res.Sent, across)
		if len(res.Lost) > 0 {
			t.Errorf("flow %d lost %v of %d across %s", i, res.Lost, res.Sent, across)
		}
	}
}

// logOutages logs what each host logged of etcd outages since its mark.
func logOutages(t *testing.T, hosts []*netns.Host, marks map[*netns.Host]outageMark) {
	t.Helper()
	for _, h := range hosts {
		t.Logf("  %s: %s", h.Name, marks[h].since(h))
	}
}

// etcdLeader returns the cluster's leader, waiting out an election.
func etcdLeader(t *testing.T, lab *netns.Lab) *netns.Etcd {
	t.Helper()
	var leader *netns.Etcd
	err := netns.Poll(10*time.Second, func() error {
		var err error
		leader, err = lab.EtcdLeader(ctxFor(t, 2*time.Second))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return leader
}

// ownLease is what identifies a host's lease in etcd: a lease deleted
// (expired) and written again has another create revision, and, when
// vtepd took the subnet afresh, another etcd lease.
type ownLease struct {
	create int64
	lease  int64
}

func ownLeaseOf(t *testing.T, c *clientv3.Client, h *netns.Host) ownLease {
	t.Helper()
	key := leaseKey(mustSubnet(t, h))
	var l ownLease
	err := netns.Poll(30*time.Second, func() error {
		resp, err := c.Get(ctxFor(t, 2*time.Second), key)
		if err != nil || len(resp.Kvs) != 1 {
			return fmt.Errorf("reading %s: %v", key, err)
		}
		l = ownLease{create: resp.Kvs[0].CreateRevision, lease: resp.Kvs[0].Lease}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// The lines vtepd logs at the start and the end of an etcd outage (store's
// sync.go and own.go), and the field of the end line that says how long
// it lasted.
const (
	msgWatchLost  = "lost the etcd watch of the leases; answering misses from the leases held until it is back"
	msgWatchBack  = "etcd watch of the leases is back; the table catches up from where it stopped"
	msgRenewFails = "renewing own lease failed; retrying until it works (the overlay goes on meanwhile)"
	msgRenewWorks = "renewing own lease works again"
)

// outageKind is one kind of etcd outage vtepd reports: its label in
// vtepd_etcd_outages_total, its start and end lines, and the end line's
// duration field.
type outageKind struct{ label, start, end, lasted string }

var (
	watchOutage   = outageKind{"watch", msgWatchLost, msgWatchBack, "down_for"}
	renewalOutage = outageKind{"renewal", msgRenewFails, msgRenewWorks, "failed_for"}
)

// outageCount is how many start and end lines of a kind a log holds.
type outageCount struct{ starts, ends int }

// outageMark is how many outages a host's vtepd had logged, of both kinds.
type outageMark struct{ watch, renewal outageCount }

func markOutages(h *netns.Host) outageMark {
	count := func(k outageKind) outageCount {
		return outageCount{len(h.Vtepd.Entries(k.start)), len(h.Vtepd.Entries(k.end))}
	}
	return outageMark{count(watchOutage), count(renewalOutage)}
}

func markAll(hosts []*netns.Host) map[*netns.Host]outageMark {
	m := map[*netns.Host]outageMark{}
	for _, h := range hosts {
		m[h] = markOutages(h)
	}
	return m
}

func (m outageMark) of(k outageKind) outageCount {
	if k == renewalOutage {
		return m.renewal
	}
	return m.watch
}

// since says what h's vtepd logged of outages since the mark.
func (m outageMark) since(h *netns.Host) string {
	now := markOutages(h)
	return fmt.Sprintf("watch outages %d started, %d over; renewal outages %d started, %d over",
		now.watch.starts-m.watch.starts, now.watch.ends-m.watch.ends, now.renewal.starts-m.renewal.starts, now.renewal.ends-m.renewal.ends)
}

// logTime is when vtepd wrote a line (zap's ISO 8601, in milliseconds).
func logTime(t *testing.T, e netns.LogEntry) time.Time {
	t.Helper()
	ts, err := time.Parse("2006-01-02T15:04:05.000Z0700", e.Str("ts"))
	if err != nil {
		t.Fatalf("log line %q: time %q: %v", e.Str("msg"), e.Str("ts"), err)
	}
	return ts
}

// logDuration is a duration field of a vtepd log line.
func logDuration(t *testing.T, e netns.LogEntry, key string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(e.Str(key))
	if err != nil {
		t.Fatalf("log line %q: %s %q: %v", e.Str("msg"), key, e.Str(key), err)
	}
	return d
}

// expectOneOutage checks that h's vtepd logged, since mark, exactly one
// outage of kind k: its start at began (when the test cut etcd off) or
// later and before healed (when the test gave etcd back), its end at
// healed or later, and the length the end line gives what lies between
// the two lines. It waits up to 30 s for the end line.
func expectOneOutage(t *testing.T, h *netns.Host, k outageKind, mark outageMark, began, healed time.Time) {
	t.Helper()
	netns.Poll(30*time.Second, func() error {
		if len(h.Vtepd.Entries(k.end)) == mark.of(k).ends {
			return errString("not over yet")
		}
		return nil
	})
	starts := h.Vtepd.Entries(k.start)[mark.of(k).starts:]
	ends := h.Vtepd.Entries(k.end)[mark.of(k).ends:]
	if len(starts) != 1 || len(ends) != 1 {
		t.Errorf("%s: %d %s outage starts and %d ends logged for one outage, want one each: %v %v", h.Name, len(starts), k.label, len(ends), starts, ends)
		return
	}
	// The log's times are in whole milliseconds, truncated.
	const ms = time.Millisecond
	from, to := logTime(t, starts[0]), logTime(t, ends[0])
	lasted := logDuration(t, ends[0], k.lasted)
	if from.Before(began.Add(-ms)) || !from.Before(healed) {
		t.Errorf("%s: %s outage logged at %v, outside the outage (%v to %v)", h.Name, k.label, from, began, healed)
	}
	if to.Before(healed.Add(-ms)) {
		t.Errorf("%s: end of the %s outage logged at %v, before etcd was back (%v)", h.Name, k.label, to, healed)
	}
	if d := lasted - to.Sub(from); d < -5*ms || d > 5*ms {
		t.Errorf("%s: %s outage logged from %v to %v, but %s says %v", h.Name, k.label, from, to, k.lasted, lasted)
	}
}

// checkOutageMetrics checks that every etcd outage h's vtepd logged the
// start of is over (an end line each), and that the metrics count them and
// their total length as the end lines say.
func checkOutageMetrics(t *testing.T, h *netns.Host) {
	t.Helper()
	fams := scrape(t, h)
	for _, k := range []outageKind{watchOutage, renewalOutage} {
		starts, ends := h.Vtepd.Entries(k.start), h.Vtepd.Entries(k.end)
		var total time.Duration
		for _, e := range ends {
			total += logDuration(t, e, k.lasted)
		}
		n := value(fams, "vtepd_etcd_outages_total", "kind", k.label)
		secs := value(fams, "vtepd_etcd_outage_seconds_total", "kind", k.label)
		if len(starts) != len(ends) || n != float64(len(ends)) {
			t.Errorf("%s: %d %s outages started, %d over, %v counted", h.Name, len(starts), k.label, len(ends), n)
		}
		// Each line's length is rounded to the millisecond, the metric's
		// is not.
		if math.Abs(secs-total.Seconds()) > 0.001*float64(len(ends)+1) {
			t.Errorf("%s: %s outages last %v in total by the log, %vs by vtepd_etcd_outage_seconds_total", h.Name, k.label, total, secs)
		}
	}
}
