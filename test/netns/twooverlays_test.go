package netns_test

import (
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vtepd/vtepd/subnetfile"
	"github.com/vtepd/vtepd/test/netns"
)

// Two overlays on one host, as flannel documents it (issue 17, item 4):
// one vtepd per overlay, each with its own etcd prefix, network config
// and VNI (so its own device, flannel.1 and flannel.2), subnet file and
// HTTP address, both with --ip-masq and --forward-rules, on hosts whose
// FORWARD policy is DROP as Docker leaves it, with a native nftables
// firewall beside it whose forward chain drops too (as firewalld's
// rejects): both of vtepd's forward backends are at work.

const (
	twoLab = "vt2ov"
	// The second overlay: its own prefix, network and VNI.
	secondPrefix  = "/vtepd2/network"
	secondConfig  = `{"Network":"10.6.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":2}}`
	secondNetwork = "10.6.0.0/16"
)

// overlayInstance is one overlay's vtepd on one host, and the container it
// serves.
type overlayInstance struct {
	host   *netns.Host
	device string // the VXLAN device, flannel.<VNI>
	args   []string
	vtepd  *netns.Process
	ctr    *netns.Container
}

func (o *overlayInstance) start(t *testing.T) {
	t.Helper()
	p, err := o.host.StartVtepd(o.args...)
	if err != nil {
		t.Fatalf("starting vtepd for %s on %s: %v", o.device, o.host.Name, err)
	}
	o.vtepd = p
}

// masqTable is the instance's ip-masq table as nft names it.
func (o *overlayInstance) masqTable() string { return "vtepd-nat-" + o.device }

// TestTwoOverlays: two hosts, each running two vtepds for two overlays
// against one etcd. Traffic flows in both overlays both ways, first packet
// included; each instance has its own ip-masq table and forward rules. A
// clean stop of one instance removes its rules and nothing of the other's:
// the other's rules (not even rewritten), device and entries stay, and a
// ping running through it loses nothing. Restarted, the instance has its
// rules back and its overlay works again.
func TestTwoOverlays(t *testing.T) {
	t.Parallel()
	needFirewallTools(t)
	// The second overlay's containers are namespaces this test makes itself
	// (the lab's AddContainer makes one per host): deleted after the lab
	// has stopped its processes, as this cleanup runs after the lab's.
	// A crashed run's are removed with the lab's leftovers, by name.
	var ctrNS []string
	t.Cleanup(func() {
		for _, ns := range ctrNS {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("deleting namespace %s: %v: %s", ns, err, out)
			}
		}
	})
	lab := newLab(t, twoLab)
	if _, err := lab.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	if err := lab.PutNetworkConfig(ctxFor(t, 10*time.Second), overlayConfig); err != nil {
		t.Fatal(err)
	}
	if err := lab.Put(ctxFor(t, 10*time.Second), secondPrefix+"/config", secondConfig); err != nil {
		t.Fatal(err)
	}

	var first, second []*overlayInstance
	for range 2 {
		h, err := lab.AddHost()
		if err != nil {
			t.Fatal(err)
		}
		mustExec(t, h, "iptables", "-P", "FORWARD", "DROP")
		mustExec(t, h, "nft", "add", "table", "inet", "hostfw")
		mustExec(t, h, "nft", "add", "chain", "inet", "hostfw", "forward", "{ type filter hook forward priority 0; policy drop; }")
		a := &overlayInstance{host: h, device: "flannel.1", args: []string{
			"--ip-masq", "--forward-rules", "--http-addr", "127.0.0.1:9742"}}
		b := &overlayInstance{host: h, device: "flannel.2", args: []string{
			"--ip-masq", "--forward-rules", "--http-addr", "127.0.0.1:9743",
			"--etcd-prefix", secondPrefix,
			"--subnet-file", filepath.Join(lab.Dir, h.Name+".overlay2.env")}}
		a.start(t)
		b.start(t)
		if a.ctr, err = h.AddContainer(3); err != nil {
			t.Fatal(err)
		}
		ns := fmt.Sprintf("%s-d%d", twoLab, h.Index)
		ctrNS = append(ctrNS, ns)
		b.ctr = addContainerFor(t, h, ns, b.env(t), 3)
		first, second = append(first, a), append(second, b)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, o := range append(slices.Clone(first), second...) {
				t.Logf("--- last lines of vtepd for %s on %s:\n%s", o.device, o.host.Name, o.vtepd.Tail(20))
			}
		}
	})
	h1 := first[0].host
	for _, o := range second {
		if env := o.env(t); env.Network.String() != secondNetwork || !env.IPMasq {
			t.Fatalf("%s's second subnet file: network %s, ip-masq %v; want %s with ip-masq", o.host.Name, env.Network, env.IPMasq, secondNetwork)
		}
	}

	// Both overlays, both ways, first packet included: each address is
	// pinged for the first time, once.
	for _, ov := range [][]*overlayInstance{first, second} {
		for _, pair := range [][2]*overlayInstance{{ov[0], ov[1]}, {ov[1], ov[0]}} {
			from, to := pair[0], pair[1]
			for _, addr := range []netip.Addr{to.ctr.Addr, to.ctr.Extra[0]} {
				firstPingFrom(t, from, addr)
			}
		}
	}
	for _, o := range append(slices.Clone(first), second...) {
		assertRules(t, o, true)
	}
	if out := mustExec(t, h1, "nft", "list", "tables"); strings.Contains(out, "table ip vtepd-nat\n") {
		t.Errorf("h1 holds the old single ip-masq table:\n%s", out)
	}
	t.Logf("h1's nft list ruleset, both overlays up:\n%s", mustExec(t, h1, "nft", "list", "ruleset"))

	// The second overlay's vtepd on h1 stops cleanly while a ping runs in
	// the first overlay.
	a1, b1 := first[0], second[0]
	masqBefore := masqListing(t, a1)
	kernelBefore := kernelView(t, h1, a1.device)
	flow, err := a1.ctr.StartFlow(first[1].ctr.Addr, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { flow.Stop() })
	if err := flow.WaitReplies(5, 10*time.Second); err != nil {
		t.Fatalf("the ping in the first overlay has no replies yet: %v", err)
	}
	stopped := time.Now()
	if err := b1.vtepd.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := b1.vtepd.Wait(15 * time.Second); err != nil {
		t.Fatalf("vtepd for %s on h1 did not stop cleanly: %v\n%s", b1.device, err, b1.vtepd.Tail(20))
	}
	t.Logf("h1's vtepd for %s stopped in %v", b1.device, time.Since(stopped).Round(time.Millisecond))
	// Half a second more of the flow after the stop, then its exact count
	// (a stopped flow waits for the replies still due).
	res := stopFlowAfter(t, flow, 25, 5*time.Second)
	t.Logf("ping in the first overlay across the other's stop: %d sent, %d received", res.Sent, res.Received)
	if len(res.Lost) > 0 {
		t.Errorf("ping in the first overlay while the second's vtepd stopped: %d sent, %d received, lost %v; want none lost", res.Sent, res.Received, res.Lost)
	}
	assertRules(t, b1, false)
	assertRules(t, a1, true)
	if after := masqListing(t, a1); after != masqBefore {
		t.Errorf("%s changed while the other vtepd stopped:\nbefore:\n%s\nafter:\n%s", a1.masqTable(), masqBefore, after)
	}
	if after := kernelView(t, h1, a1.device); after != kernelBefore {
		t.Errorf("%s on h1 changed while the other vtepd stopped:\nbefore:\n%s\nafter:\n%s", a1.device, kernelBefore, after)
	}
	if _, err := h1.Kernel(b1.device); err != nil {
		t.Errorf("%s is gone after its vtepd's clean stop (a device outlives its vtepd): %v", b1.device, err)
	}
	firstPingFrom(t, a1, first[1].ctr.Extra[1]) // still answered by the running vtepd
	// The control: without its forward rules, h1's DROP policy stops the
	// second overlay, which says the policy is real and the rules matter.
	if res, err := b1.ctr.Ping(second[1].ctr.Addr, "-c1", "-W1"); err != nil || res.Received != 0 {
		t.Errorf("second overlay through h1 without its forward rules: %d received (%v); want the DROP policy to drop it", res.Received, err)
	}

	// Restarted, it has its own rules back, and its overlay works again,
	// fresh addresses included; the first overlay's rules are as they were.
	b1.start(t)
	assertRules(t, b1, true)
	assertRules(t, a1, true)
	for _, pair := range [][2]*overlayInstance{{second[0], second[1]}, {second[1], second[0]}} {
		firstPingFrom(t, pair[0], pair[1].ctr.Extra[1])
	}
	if after := masqListing(t, a1); after != masqBefore {
		t.Errorf("%s changed while the other vtepd restarted:\nbefore:\n%s\nafter:\n%s", a1.masqTable(), masqBefore, after)
	}
	t.Logf("h1's iptables-save -t filter after the restart:\n%s", mustExec(t, h1, "iptables-save", "-t", "filter"))
}

// subnetFileOf is where an instance's vtepd writes its subnet file: the
// last --subnet-file it was given, else the host's.
func subnetFileOf(o *overlayInstance) string {
	path := o.host.SubnetFile
	for i, a := range o.args {
		if a == "--subnet-file" && i+1 < len(o.args) {
			path = o.args[i+1]
		}
	}
	return path
}

// env reads the instance's subnet file.
func (o *overlayInstance) env(t *testing.T) subnetfile.Env {
	t.Helper()
	env, err := subnetfile.Read(subnetFileOf(o))
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// addContainerFor builds on h what AddContainer builds for the host's first
// overlay, for the overlay whose subnet file says env: a bridge (cbr1)
// with the subnet's gateway and MTU, and a container namespace ns on it
// with the subnet's .2 and extra more addresses from .10 up. All of it is
// made inside the host's and the container's namespaces.
func addContainerFor(t *testing.T, h *netns.Host, ns string, env subnetfile.Env, extra int) *netns.Container {
	t.Helper()
	base := env.Subnet.Masked().Addr().As4()
	at := func(n int) netip.Addr {
		b := base
		b[3] += byte(n)
		return netip.AddrFrom4(b)
	}
	c := &netns.Container{NS: ns, Host: h, Addr: at(2)}
	for n := range extra {
		c.Extra = append(c.Extra, at(10+n))
	}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	mtu, bits := strconv.Itoa(env.MTU), strconv.Itoa(env.Subnet.Bits())
	run("ip", "netns", "add", ns)
	run("ip", "-n", ns, "link", "set", "lo", "up")
	run("ip", "-n", h.NS, "link", "add", "cbr1", "mtu", mtu, "type", "bridge")
	run("ip", "-n", h.NS, "addr", "add", env.Subnet.String(), "dev", "cbr1")
	run("ip", "-n", h.NS, "link", "set", "cbr1", "up")
	run("ip", "-n", h.NS, "link", "add", "veth-d", "mtu", mtu, "type", "veth", "peer", "name", "eth0", "netns", ns, "mtu", mtu)
	run("ip", "-n", h.NS, "link", "set", "veth-d", "master", "cbr1", "up")
	for _, a := range append([]netip.Addr{c.Addr}, c.Extra...) {
		run("ip", "-n", ns, "addr", "add", a.String()+"/"+bits, "dev", "eth0")
	}
	run("ip", "-n", ns, "link", "set", "eth0", "up")
	run("ip", "-n", ns, "route", "add", "default", "via", env.Subnet.Addr().String())
	return c
}

// firstPingFrom pings addr once from the instance's container and fails t
// if the one packet is lost.
func firstPingFrom(t *testing.T, from *overlayInstance, addr netip.Addr) {
	t.Helper()
	res, err := from.ctr.Ping(addr, "-c1", "-W1")
	if err != nil || res.Received != 1 {
		t.Errorf("first ping in %s's overlay, %s -> %s, lost: %v", from.device, from.host.Name, addr, err)
	}
}

var counters = regexp.MustCompile(`counter packets \d+ bytes \d+`)

// masqListing is the instance's ip-masq table as `nft -a list table` shows
// it, with rule handles (a rewritten table has new ones) and without the
// packet counts (traffic changes them).
func masqListing(t *testing.T, o *overlayInstance) string {
	t.Helper()
	return counters.ReplaceAllString(mustExec(t, o.host, "nft", "-a", "list", "table", "ip", o.masqTable()), "counter")
}

// assertRules checks, in `nft list ruleset` and `iptables-save`, that the
// instance's ip-masq table holds its four rules, and the iptables filter
// table and the native forward chain (inet hostfw) its two forward rules
// for its network each, or, when present is false, that none has any.
func assertRules(t *testing.T, o *overlayInstance, present bool) {
	t.Helper()
	env := o.env(t)
	ruleset := mustExec(t, o.host, "nft", "list", "ruleset")
	masq := 0
	if i := strings.Index(ruleset, "table ip "+o.masqTable()+" {"); i >= 0 {
		table, _, _ := strings.Cut(ruleset[i:], "\n}")
		masq = strings.Count(table, `comment "vtepd: `)
		if !strings.Contains(table, "ip saddr "+env.Subnet.Masked().String()+" ip daddr "+env.Network.String()+" counter") {
			t.Errorf("%s on %s is not for %s in %s:\n%s", o.masqTable(), o.host.Name, env.Subnet.Masked(), env.Network, table)
		}
	}
	from, to := `"vtepd: forward from `+env.Network.String()+`"`, `"vtepd: forward to `+env.Network.String()+`"`
	var forward []string
	for _, l := range strings.Split(mustExec(t, o.host, "iptables-save", "-t", "filter"), "\n") {
		if strings.Contains(l, "--comment "+from) || strings.Contains(l, "--comment "+to) {
			forward = append(forward, l)
		}
	}
	native := 0
	if i := strings.Index(ruleset, "table inet hostfw {"); i >= 0 {
		table, _, _ := strings.Cut(ruleset[i:], "\n}")
		native = strings.Count(table, "comment "+from) + strings.Count(table, "comment "+to)
	}
	want := map[bool][3]int{true: {4, 2, 2}, false: {0, 0, 0}}[present]
	if masq != want[0] || len(forward) != want[1] || native != want[2] {
		t.Errorf("%s's vtepd on %s: %d ip-masq rules in %s, iptables forward rules %q, %d in inet hostfw forward; want %d, %d and %d\n%s",
			o.device, o.host.Name, masq, o.masqTable(), forward, native, want[0], want[1], want[2], ruleset)
	}
}

// kernelView is what a device holds for its peers: its index and MAC, its
// resolved neighbour entries, its FDB entries and its routes, in a stable
// order.
func kernelView(t *testing.T, h *netns.Host, device string) string {
	t.Helper()
	k, err := h.Kernel(device)
	if err != nil {
		t.Fatal(err)
	}
	lines := []string{fmt.Sprintf("device %s index %d mac %s", device, k.Device.Attrs().Index, k.Device.Attrs().HardwareAddr)}
	var entries []string
	for _, n := range k.Neighbours {
		if len(n.MAC) > 0 { // the kernel's own unresolved entries come and go
			entries = append(entries, fmt.Sprintf("neigh %s %s", n.IP, n.MAC))
		}
	}
	for _, f := range k.FDB {
		entries = append(entries, fmt.Sprintf("fdb %s dst %s", f.MAC, f.Dst))
	}
	for _, r := range k.Routes {
		entries = append(entries, "route "+r.String())
	}
	slices.Sort(entries)
	return strings.Join(append(lines, entries...), "\n")
}
