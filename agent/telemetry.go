package agent

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/miss"
	"github.com/vtepd/vtepd/store"
)

// telemetry is what the agent tells about itself: Prometheus metrics,
// health, status, and the recent misses. Start-up phases hand it what they
// bring up, each through a setter of its own; until then health says what
// it is waiting for. It reads the components through the narrow interfaces
// below, never through their concrete types: what a scrape may touch is
// what these name.
type telemetry struct {
	version string
	started time.Time
	// onPhase, if set, hears every start-up phase (systemd's STATUS=).
	// Set it before the first setPhase.
	onPhase func(phase string)

	mu      sync.Mutex
	phase   string // what start-up is doing; "" once ready
	network netip.Prefix
	// network6 is the overlay's IPv6 network, when it has one.
	network6 netip.Prefix
	// configNote says how the network config in etcd differs from the
	// running one ("": it does not).
	configNote string
	kernel     kernelReader
	own        ownLease
	table      leaseTable
	listener   listenerStats
	sweeps     sweepCounts
	filters    firewallState
	// families are the overlay's address families, one VXLAN device each,
	// in the order the agent added them (IPv4 first).
	families []*familyTelemetry

	// Liveness: the listener's round count as last seen, when it last
	// moved, and how long it may stand still (missPathStall).
	turnsSeen  uint64
	turnsMoved time.Time
	stallAfter time.Duration

	recent   recentMisses
	latency  *prometheus.HistogramVec
	registry *prometheus.Registry
}

// familyTelemetry is one address family's device and miss path, as
// telemetry reads them; its name ("ipv4", "ipv6") is the family label of
// the metrics, status and recent misses.
type familyTelemetry struct {
	name   string
	device *deviceState
	misses missCounts
	writes writeCounts
	expiry expiryCounts
	// byKind are the latency histogram's children for this family,
	// resolved once: a label lookup per miss is a hash and a map read the
	// miss path need not pay.
	byKind [3]prometheus.Observer
}

// What telemetry reads of the components.
type (
	// kernelReader is *fabric.Reader: the device's state, read on a
	// socket of its own, never the miss path's.
	kernelReader interface {
		CheckDevice(index int, name string, addr netip.Addr, routes []netip.Prefix) ([]string, error)
		Neighbours(ifindex int) ([]fabric.Neighbour, error)
		FDB(ifindex int) ([]fabric.FDBEntry, error)
	}
	// ownLease is *store.OwnLease.
	ownLease interface {
		Lease() store.Lease
		Expires() time.Time
		Conflict() (error, time.Time)
		Stats() store.OwnLeaseStats
	}
	// leaseTable is *store.Table.
	leaseTable interface {
		Synced() <-chan struct{}
		Stats() store.TableStats
		Leases() []store.Lease
		Rejected() []store.RejectedLease
	}
	// missCounts is *miss.Responder.
	missCounts interface {
		Count(miss.Kind, miss.Outcome) uint64
		Permanent() int
	}
	// listenerStats is *miss.Listener. Turns is what liveness watches, as
	// systemd's watchdog does.
	listenerStats interface {
		Stats() miss.ListenerStats
		Turns() uint64
	}
	// writeCounts is *fabric.Entries.
	writeCounts interface {
		Stats(fabric.Op) fabric.WriteStats
	}
	// sweepCounts is the agent's sweeper.
	sweepCounts interface{ Stats() sweepStats }
	// expiryCounts is the agent's expiry of idle peers.
	expiryCounts interface{ Stats() expiryStats }
	// firewallState is the agent's filters.
	firewallState interface{ describe() FirewallStatus }
)

// deviceState is the VXLAN device as health and status describe it. The
// address and routes are known, and checked, once the lease is.
type deviceState struct {
	name    string
	index   int
	mac     string
	mtu     int
	gateway netip.Addr
	routes  []netip.Prefix
}

func newTelemetry(version string) *telemetry {
	t := &telemetry{version: version, started: time.Now(), phase: "starting", stallAfter: missPathStall}
	t.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "vtepd_miss_response_seconds",
		Help: "Time from receiving a miss from the kernel to the kernel's ack of the last write answering it.",
		// 5 µs to 80 ms: a neighbour write is ~10 µs, one that releases a
		// queued packet carries that packet's delivery too.
		Buckets: prometheus.ExponentialBuckets(5e-6, 2, 15),
	}, []string{"family", "kind"})
	t.registry = prometheus.NewRegistry()
	t.registry.MustRegister(t.latency, t, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return t
}

func (t *telemetry) setPhase(p string) {
	t.mu.Lock()
	t.phase = p
	t.mu.Unlock()
	if p != "" && t.onPhase != nil {
		t.onPhase(p)
	}
}

// The setters, one per start-up phase that brings something up.

func (t *telemetry) setNetwork(p, p6 netip.Prefix) { t.set(func() { t.network, t.network6 = p, p6 }) }
func (t *telemetry) setConfigNote(n string)        { t.set(func() { t.configNote = n }) }
func (t *telemetry) setFilters(f firewallState)    { t.set(func() { t.filters = f }) }
func (t *telemetry) setTable(l leaseTable)         { t.set(func() { t.table = l }) }
func (t *telemetry) setOwnLease(o ownLease)        { t.set(func() { t.own = o }) }

func (t *telemetry) setKernel(k kernelReader) { t.set(func() { t.kernel = k }) }
func (t *telemetry) setListener(l listenerStats, s sweepCounts) {
	t.set(func() { t.listener, t.sweeps = l, s })
}

// addFamily adds an address family ("ipv4", "ipv6") with its device, and
// returns it for the setters below.
func (t *telemetry) addFamily(name string, d deviceState) *familyTelemetry {
	f := &familyTelemetry{name: name, device: &d}
	for _, k := range []miss.Kind{miss.L3, miss.L2} {
		f.byKind[k] = t.latency.WithLabelValues(name, k.String())
	}
	t.set(func() { t.families = append(t.families, f) })
	return f
}

// setAddressing makes health check the family's device's address and
// routes.
func (t *telemetry) setAddressing(f *familyTelemetry, gateway netip.Addr, routes []netip.Prefix) {
	t.set(func() {
		d := *f.device
		d.gateway, d.routes = gateway, routes
		f.device = &d
	})
}

func (t *telemetry) setMissPath(f *familyTelemetry, m missCounts, w writeCounts, e expiryCounts) {
	t.set(func() { f.misses, f.writes, f.expiry = m, w, e })
}

func (t *telemetry) set(fn func()) {
	t.mu.Lock()
	fn()
	t.mu.Unlock()
}

// observer is the Observe hook of f's responder.
func (t *telemetry) observer(f *familyTelemetry) func(m *miss.Miss, res miss.Result) {
	return func(m *miss.Miss, res miss.Result) {
		if m.Kind == miss.L3 || m.Kind == miss.L2 {
			f.byKind[m.Kind].Observe(res.Latency.Seconds())
		}
		t.recent.record(f.name, m, res)
	}
}

// familiesNow returns the families and the kernel reader, for a scrape or
// a status page.
func (t *telemetry) familiesNow() ([]familyTelemetry, kernelReader) {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]familyTelemetry, len(t.families))
	for i, f := range t.families {
		out[i] = *f
	}
	return out, t.kernel
}

// kernelEntries counts a device's neighbour entries by state and its FDB
// entries.
func kernelEntries(kernel kernelReader, dev *deviceState) (neigh map[string]int, fdb int, err error) {
	if dev == nil || kernel == nil {
		return nil, 0, nil
	}
	ns, err := kernel.Neighbours(dev.index)
	if err != nil {
		return nil, 0, err
	}
	neigh = map[string]int{}
	for _, n := range ns {
		neigh[strings.ToLower(miss.StateString(uint16(n.State)))]++
	}
	fs, err := kernel.FDB(dev.index)
	return neigh, len(fs), err
}

// Health is the answer of /healthz (liveness) or /readyz (readiness).
type Health struct {
	Healthy bool
	// Reasons say why not, when not.
	Reasons []string
	// Notes are worth knowing but do not make the answer a no.
	Notes []string
}

// missPathStall is how long the miss listener's round count may stand
// still before liveness fails. The loop comes round at least five times a
// second when idle, so this is a miss handler or a kernel write that does
// not return, not a slow one; it is a third of the unit's WatchdogSec=30s,
// which watches the same count.
const missPathStall = 10 * time.Second

// liveness is flannel's /healthz: is this process worth keeping? It is
// while it serves and, once the miss path has come round at all, while it
// still comes round (the count systemd's watchdog follows). What a restart
// does not fix (etcd away, no lease yet, a device someone took down) is
// readiness's business: a liveness probe failing on it would restart vtepd
// in a loop and fix nothing. The count is sampled when asked: a stall is
// seen once it has lasted stallAfter since the count was first seen at
// that value.
func (t *telemetry) liveness() Health {
	var h Health
	t.mu.Lock()
	if t.listener != nil {
		now, n := time.Now(), t.listener.Turns()
		switch {
		case n == 0:
			// Not answering misses yet: start-up, which readiness covers.
		case n != t.turnsSeen:
			t.turnsSeen, t.turnsMoved = n, now
		case now.Sub(t.turnsMoved) >= t.stallAfter:
			h.Reasons = append(h.Reasons, fmt.Sprintf("the miss path has not come round for %s (stuck at round %d): a miss handler or a kernel write does not return",
				now.Sub(t.turnsMoved).Round(time.Millisecond), n))
		}
	}
	t.mu.Unlock()
	h.Healthy = len(h.Reasons) == 0
	return h
}

// readiness is /readyz: ready when the device is up, this host's lease is
// held and the lease table has synced. etcd being unreachable is only a
// note: the table keeps answering misses for every lease it holds, and the
// own lease stays held until it expires, which a healthy cluster would not
// let happen.
func (t *telemetry) readiness() Health {
	t.mu.Lock()
	phase, own, table, configNote := t.phase, t.own, t.table, t.configNote
	t.mu.Unlock()
	families, kernel := t.familiesNow()
	var h Health
	if phase != "" {
		h.Reasons = append(h.Reasons, phase)
	}
	if configNote != "" {
		h.Notes = append(h.Notes, configNote)
	}
	for _, f := range families {
		if dev := f.device; dev != nil && dev.routes != nil && kernel != nil {
			missing, err := kernel.CheckDevice(dev.index, dev.name, dev.gateway, dev.routes)
			if err != nil {
				missing = append(missing, err.Error())
			}
			h.Reasons = append(h.Reasons, missing...)
		}
	}
	if own != nil {
		if exp := own.Expires(); time.Now().After(exp) {
			h.Reasons = append(h.Reasons, fmt.Sprintf("own lease %s expired at %s", own.Lease(), exp.Format(time.RFC3339)))
		}
		if err, since := own.Conflict(); err != nil {
			h.Reasons = append(h.Reasons, fmt.Sprintf("own subnet held by another writer since %s (answering from the table meanwhile): %v",
				since.Format(time.RFC3339), err))
		}
	}
	if table != nil {
		select {
		case <-table.Synced():
		default:
			h.Reasons = append(h.Reasons, "lease table not synced yet")
		}
		if st := table.Stats(); !st.Watching && !st.WatchDownSince.IsZero() {
			h.Notes = append(h.Notes, fmt.Sprintf("etcd watch down since %s: answering from the %d leases held",
				st.WatchDownSince.Format(time.RFC3339), st.Leases))
		}
	}
	h.Healthy = len(h.Reasons) == 0
	return h
}

// Status is the answer of /status, what `vtepd status` prints.
type Status struct {
	Version string    `json:"version"`
	Started time.Time `json:"started"`
	Healthy bool      `json:"healthy"`
	Reasons []string  `json:"reasons,omitempty"`
	Notes   []string  `json:"notes,omitempty"`

	// Network and IPv6Network are the overlay's, by family.
	Network     string       `json:"network,omitempty"`
	IPv6Network string       `json:"ipv6_network,omitempty"`
	Lease       *LeaseStatus `json:"own_lease,omitempty"`
	Leases      *TableStatus `json:"leases,omitempty"`
	// Families are the overlay's address families, each with its device
	// and miss path.
	Families []FamilyStatus `json:"families,omitempty"`
	Netlink  *NetlinkStatus `json:"netlink,omitempty"`
	// Firewall says which packet-filter rules vtepd keeps.
	Firewall *FirewallStatus `json:"firewall,omitempty"`
}

// FamilyStatus is one address family's device and miss path.
type FamilyStatus struct {
	// Family is "ipv4" or "ipv6".
	Family string        `json:"family"`
	Device *DeviceStatus `json:"device,omitempty"`
	// Entries counts the device's neighbour entries by state, and its FDB
	// entries under "fdb".
	Entries map[string]int `json:"entries,omitempty"`
	// Misses counts misses by kind, then outcome.
	Misses map[string]map[string]uint64 `json:"misses,omitempty"`
	// Permanent is how many PERMANENT neighbour entries the device holds.
	Permanent int `json:"permanent_neighbours"`
	// Writes counts kernel writes by operation.
	Writes map[string]fabric.WriteStats `json:"kernel_writes,omitempty"`
}

// DeviceStatus describes the VXLAN device.
type DeviceStatus struct {
	Name  string `json:"name"`
	Index int    `json:"index"`
	MAC   string `json:"mac"`
	MTU   int    `json:"mtu"`
}

// LeaseStatus describes this host's lease, a part per family.
type LeaseStatus struct {
	Key        string    `json:"key"`
	Subnet     string    `json:"subnet,omitempty"`
	PublicIP   string    `json:"public_ip,omitempty"`
	VtepMAC    string    `json:"vtep_mac,omitempty"`
	IPv6Subnet string    `json:"ipv6_subnet,omitempty"`
	PublicIPv6 string    `json:"public_ipv6,omitempty"`
	VtepMACv6  string    `json:"vtep_mac_v6,omitempty"`
	Expires    time.Time `json:"expires"`
	ExpiresIn  float64   `json:"expires_in_seconds"`
}

// TableStatus describes the lease table.
type TableStatus struct {
	Admitted      int    `json:"admitted"`
	Rejected      int    `json:"rejected"`
	Invalid       uint64 `json:"invalid"`
	Conflicts     uint64 `json:"conflicts"`
	Watching      bool   `json:"etcd_watching"`
	WatchRestarts uint64 `json:"etcd_watch_restarts"`
	Relists       uint64 `json:"etcd_relists"`
}

// NetlinkStatus describes the miss socket.
type NetlinkStatus struct {
	Overflows uint64 `json:"overflows"`
	Sweeps    uint64 `json:"sweeps"`
	Swept     uint64 `json:"sweep_answered"`
	Malformed uint64 `json:"malformed"`
	Foreign   uint64 `json:"foreign"`
}

// status is healthy when both probes are: `vtepd status` is the one
// command an operator runs, and a stuck miss path is as much its business
// as a missing lease.
func (t *telemetry) status() Status {
	ready, live := t.readiness(), t.liveness()
	s := Status{Version: t.version, Started: t.started, Healthy: ready.Healthy && live.Healthy,
		Reasons: append(live.Reasons, ready.Reasons...), Notes: ready.Notes}
	t.mu.Lock()
	network, network6, own, table, listener, sweeps, fw := t.network, t.network6, t.own, t.table, t.listener, t.sweeps, t.filters
	t.mu.Unlock()
	families, kernel := t.familiesNow()
	if fw != nil {
		d := fw.describe()
		s.Firewall = &d
	}
	if network.IsValid() {
		s.Network = network.String()
	}
	if network6.IsValid() {
		s.IPv6Network = network6.String()
	}
	if own != nil {
		l, exp := own.Lease(), own.Expires()
		s.Lease = &LeaseStatus{Key: l.Key, Expires: exp, ExpiresIn: time.Until(exp).Seconds()}
		if p, ok := l.IPv4(); ok {
			s.Lease.Subnet, s.Lease.PublicIP, s.Lease.VtepMAC = p.Subnet.String(), p.PublicIP.String(), p.VtepMAC.String()
		}
		if p, ok := l.IPv6(); ok {
			s.Lease.IPv6Subnet, s.Lease.PublicIPv6, s.Lease.VtepMACv6 = p.Subnet.String(), p.PublicIP.String(), p.VtepMAC.String()
		}
	}
	if table != nil {
		st := table.Stats()
		s.Leases = &TableStatus{Admitted: st.Leases, Rejected: st.Rejected, Invalid: st.Invalid, Conflicts: st.Conflicts,
			Watching: st.Watching, WatchRestarts: st.WatchRestarts, Relists: st.Relists}
	}
	for _, f := range families {
		fs := FamilyStatus{Family: f.name}
		if dev := f.device; dev != nil {
			fs.Device = &DeviceStatus{Name: dev.name, Index: dev.index, MAC: dev.mac, MTU: dev.mtu}
		}
		if neigh, fdb, err := kernelEntries(kernel, f.device); err == nil && neigh != nil {
			fs.Entries = neigh
			fs.Entries["fdb"] = fdb
		}
		if f.misses != nil {
			fs.Misses = map[string]map[string]uint64{}
			for _, k := range []miss.Kind{miss.L3, miss.L2} {
				fs.Misses[k.String()] = map[string]uint64{}
				for _, o := range miss.Outcomes() {
					fs.Misses[k.String()][o.String()] = f.misses.Count(k, o)
				}
			}
			fs.Permanent = f.misses.Permanent()
		}
		if f.writes != nil {
			fs.Writes = map[string]fabric.WriteStats{}
			for _, op := range fabric.Ops() {
				fs.Writes[op.String()] = f.writes.Stats(op)
			}
		}
		s.Families = append(s.Families, fs)
	}
	if listener != nil && sweeps != nil {
		ls, ss := listener.Stats(), sweeps.Stats()
		s.Netlink = &NetlinkStatus{Overflows: ls.Overflows, Sweeps: ss.sweeps, Swept: ss.answered,
			Malformed: ls.Malformed, Foreign: ls.Foreign}
	}
	return s
}

// Prometheus descriptions of the counters kept by the components.
var (
	descMisses        = prometheus.NewDesc("vtepd_misses_total", "Misses from the kernel for vtepd's devices, by family (ipv4, ipv6: the device's), kind (L3: neighbour, L2: FDB) and outcome.", []string{"family", "kind", "outcome"}, nil)
	descWrites        = prometheus.NewDesc("vtepd_kernel_writes_total", "Neighbour, FDB and route writes to the kernel, by family and operation.", []string{"family", "op"}, nil)
	descWriteErrors   = prometheus.NewDesc("vtepd_kernel_write_errors_total", "Failed kernel writes, by family, operation and reason (table_full: gc_thresh3 reached).", []string{"family", "op", "reason"}, nil)
	descEntries       = prometheus.NewDesc("vtepd_entries", "Entries on a device now, read from the kernel at scrape time, by family: neighbours by state, and FDB entries.", []string{"family", "kind", "state"}, nil)
	descLeases        = prometheus.NewDesc("vtepd_leases", "Leases in the table: admitted, or rejected for a conflict.", []string{"state"}, nil)
	descInvalid       = prometheus.NewDesc("vtepd_invalid_leases_total", "Lease values skipped as invalid, once per key and revision.", nil, nil)
	descConflicts     = prometheus.NewDesc("vtepd_lease_conflicts_total", "Leases rejected for overlapping another, sharing its MAC, or claiming this host's subnet.", nil, nil)
	descWatchRestarts = prometheus.NewDesc("vtepd_etcd_watch_restarts_total", "Times the etcd watch of the leases ended and was started again.", nil, nil)
	descRelists       = prometheus.NewDesc("vtepd_etcd_relists_total", "Full re-lists of the leases after the watch fell behind compaction.", nil, nil)
	descWatching      = prometheus.NewDesc("vtepd_etcd_watching", "1 while the etcd watch of the leases delivers, 0 while vtepd answers from the table alone.", nil, nil)
	descOverflows     = prometheus.NewDesc("vtepd_netlink_overflows_total", "Times the miss socket overflowed (ENOBUFS) and the kernel dropped notifications.", nil, nil)
	descSweeps        = prometheus.NewDesc("vtepd_sweeps_total", "Sweeps of the neighbour table for addresses still pending, after a socket overflow or a new lease.", nil, nil)
	descSwept         = prometheus.NewDesc("vtepd_sweep_answered_total", "Addresses answered by sweeps: misses lost to an overflow, or asked before a lease was known.", nil, nil)
	descMalformed     = prometheus.NewDesc("vtepd_netlink_malformed_total", "Neighbour messages that could not be decoded.", nil, nil)
	descForeign       = prometheus.NewDesc("vtepd_netlink_foreign_total", "Messages on the miss socket not sent by the kernel, dropped.", nil, nil)
	descExpiry        = prometheus.NewDesc("vtepd_own_lease_expiry_seconds", "Seconds until this host's lease expires unless renewed.", nil, nil)
	descOutages       = prometheus.NewDesc("vtepd_etcd_outages_total", "Outages of etcd as vtepd saw them, counted once each is over: the lease watch not delivering (watch), or the own lease's renewals failing (renewal).", []string{"kind"}, nil)
	descOutageSeconds = prometheus.NewDesc("vtepd_etcd_outage_seconds_total", "Total length of the etcd outages counted in vtepd_etcd_outages_total.", []string{"kind"}, nil)
	descConflict      = prometheus.NewDesc("vtepd_own_lease_conflict", "1 while this host's subnet is held by another writer in etcd (vtepd waits to take it back), else 0.", nil, nil)
	descPermanent     = prometheus.NewDesc("vtepd_permanent_neighbours", "PERMANENT neighbour entries on a device, by family, as last counted: answers that outlive vtepd's absence, bounded by --neighbour-limit.", []string{"family"}, nil)
	descIdlePeers     = prometheus.NewDesc("vtepd_idle_peers_removed_total", "Peers whose entries were removed because nothing was sent to them for --idle-timeout, by family.", []string{"family"}, nil)
	descIdleEntries   = prometheus.NewDesc("vtepd_idle_entries_removed_total", "Kernel entries (neighbours, FDB entries, host routes) removed with idle peers, by family.", []string{"family"}, nil)
	descReady         = prometheus.NewDesc("vtepd_ready", "1 when ready, as /readyz answers 200 (device up, own lease held, table synced), else 0.", nil, nil)
)

// Describe implements prometheus.Collector.
func (t *telemetry) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMisses, descWrites, descWriteErrors, descEntries, descLeases, descInvalid,
		descConflicts, descWatchRestarts, descRelists, descWatching, descOverflows, descSweeps, descSwept, descMalformed,
		descForeign, descExpiry, descOutages, descOutageSeconds, descConflict, descPermanent, descIdlePeers, descIdleEntries, descReady} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it reads the components'
// counters at scrape time, so the miss path pays nothing for them.
func (t *telemetry) Collect(ch chan<- prometheus.Metric) {
	t.mu.Lock()
	own, table, listener, sweeps := t.own, t.table, t.listener, t.sweeps
	t.mu.Unlock()
	families, kernel := t.familiesNow()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	seconds := func(d *prometheus.Desc, v time.Duration, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v.Seconds(), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	ready := 0.0
	if t.readiness().Healthy {
		ready = 1
	}
	gauge(descReady, ready)
	for _, f := range families {
		if f.misses != nil {
			for _, k := range []miss.Kind{miss.L3, miss.L2} {
				for _, o := range miss.Outcomes() {
					counter(descMisses, f.misses.Count(k, o), f.name, k.String(), o.String())
				}
			}
			gauge(descPermanent, float64(f.misses.Permanent()), f.name)
		}
		if f.expiry != nil {
			st := f.expiry.Stats()
			counter(descIdlePeers, st.peers, f.name)
			counter(descIdleEntries, st.entries, f.name)
		}
		if f.writes != nil {
			for _, op := range fabric.Ops() {
				st := f.writes.Stats(op)
				counter(descWrites, st.Writes, f.name, op.String())
				counter(descWriteErrors, st.TableFull, f.name, op.String(), "table_full")
				counter(descWriteErrors, st.Errors-st.TableFull, f.name, op.String(), "other")
			}
		}
		if neigh, fdb, err := kernelEntries(kernel, f.device); err == nil && neigh != nil {
			for state, n := range neigh {
				gauge(descEntries, float64(n), f.name, "neighbour", state)
			}
			gauge(descEntries, float64(fdb), f.name, "fdb", "permanent")
		}
	}
	if table != nil {
		st := table.Stats()
		gauge(descLeases, float64(st.Leases), "admitted")
		gauge(descLeases, float64(st.Rejected), "rejected")
		counter(descInvalid, st.Invalid)
		counter(descConflicts, st.Conflicts)
		counter(descWatchRestarts, st.WatchRestarts)
		counter(descRelists, st.Relists)
		watching := 0.0
		if st.Watching {
			watching = 1
		}
		gauge(descWatching, watching)
		counter(descOutages, st.WatchOutages, "watch")
		seconds(descOutageSeconds, st.WatchOutageTime, "watch")
	}
	if listener != nil {
		ls := listener.Stats()
		counter(descOverflows, ls.Overflows)
		counter(descMalformed, ls.Malformed)
		counter(descForeign, ls.Foreign)
		if sweeps != nil {
			ss := sweeps.Stats()
			counter(descSweeps, ss.sweeps)
			counter(descSwept, ss.answered)
		}
	}
	if own != nil {
		gauge(descExpiry, time.Until(own.Expires()).Seconds())
		st := own.Stats()
		counter(descOutages, st.Outages, "renewal")
		seconds(descOutageSeconds, st.OutageTime, "renewal")
		conflict := 0.0
		if err, _ := own.Conflict(); err != nil {
			conflict = 1
		}
		gauge(descConflict, conflict)
	}
}

// leaseJSON is a lease as /debug/leases shows it.
type leaseJSON struct {
	Key            string `json:"key"`
	Subnet         string `json:"subnet,omitempty"`
	PublicIP       string `json:"public_ip,omitempty"`
	VtepMAC        string `json:"vtep_mac,omitempty"`
	IPv6Subnet     string `json:"ipv6_subnet,omitempty"`
	PublicIPv6     string `json:"public_ipv6,omitempty"`
	VtepMACv6      string `json:"vtep_mac_v6,omitempty"`
	VNI            int    `json:"vni"`
	CreateRevision int64  `json:"create_revision"`
	ModRevision    int64  `json:"mod_revision"`
	Own            bool   `json:"own,omitempty"`
	Rejected       string `json:"rejected,omitempty"`
}

func toLeaseJSON(l store.Lease, ownKey string) leaseJSON {
	j := leaseJSON{Key: l.Key, VNI: l.VNI, CreateRevision: l.CreateRevision, ModRevision: l.ModRevision, Own: l.Key == ownKey}
	if p, ok := l.IPv4(); ok {
		j.Subnet, j.PublicIP, j.VtepMAC = p.Subnet.String(), p.PublicIP.String(), p.VtepMAC.String()
	}
	if p, ok := l.IPv6(); ok {
		j.IPv6Subnet, j.PublicIPv6, j.VtepMACv6 = p.Subnet.String(), p.PublicIP.String(), p.VtepMAC.String()
	}
	return j
}

// missJSON is a miss as /debug/misses shows it.
type missJSON struct {
	Time      time.Time `json:"time"`
	Family    string    `json:"family"`
	Kind      string    `json:"kind"`
	IP        string    `json:"ip,omitempty"`
	MAC       string    `json:"mac,omitempty"`
	State     string    `json:"state"`
	Outcome   string    `json:"outcome"`
	Lease     string    `json:"lease,omitempty"`
	VTEP      string    `json:"vtep,omitempty"`
	VtepMAC   string    `json:"vtep_mac,omitempty"`
	LatencyUS float64   `json:"latency_us"`
	Error     string    `json:"error,omitempty"`
}

func toMissJSON(m recentMiss) missJSON {
	j := missJSON{Time: m.at, Family: m.family, Kind: m.kind.String(), State: miss.StateString(m.state), Outcome: m.outcome.String(),
		LatencyUS: float64(m.latency) / float64(time.Microsecond)}
	if m.ip.IsValid() {
		j.IP = m.ip.String()
	}
	if m.hasMAC {
		j.MAC = m.mac.String()
	}
	if m.lease.Subnet.IsValid() {
		j.Lease, j.VTEP, j.VtepMAC = m.lease.Subnet.String(), m.lease.PublicIP.String(), m.lease.VtepMAC.String()
	}
	if m.err != nil {
		j.Error = m.err.Error()
	}
	return j
}
