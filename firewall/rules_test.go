package firewall

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"go.uber.org/zap"
)

var (
	testDevice  = "flannel.1"
	testNetwork = netip.MustParsePrefix("10.5.0.0/16")
	testSubnet  = netip.MustParsePrefix("10.5.48.0/24")
)

func texts(rules []nftRule) []string {
	var s []string
	for _, r := range rules {
		s = append(s, r.text())
	}
	return s
}

func TestMasqRules(t *testing.T) {
	equal(t, "masquerade rules", texts(masqRules(testNetwork, testSubnet)), []string{
		`ip saddr 10.5.48.0/24 ip daddr 10.5.0.0/16 counter snat to ip saddr comment "vtepd: subnet to overlay, source kept"`,
		`ip saddr 10.5.48.0/24 ip daddr != 224.0.0.0/4 counter masquerade fully-random comment "vtepd: subnet to outside, masquerade"`,
		`ip saddr != 10.5.0.0/16 ip daddr 10.5.48.0/24 counter accept comment "vtepd: outside to subnet, no NAT"`,
		`ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 counter masquerade fully-random comment "vtepd: outside to overlay, masquerade"`,
	})
}

func TestForwardRules(t *testing.T) {
	b := &nftForward{network: testNetwork}
	equal(t, "ip family", texts(b.rules(nftables.TableFamilyIPv4)), []string{
		`ip saddr 10.5.0.0/16 counter accept comment "vtepd: forward from 10.5.0.0/16"`,
		`ip daddr 10.5.0.0/16 counter accept comment "vtepd: forward to 10.5.0.0/16"`,
	})
	equal(t, "inet family", texts(b.rules(nftables.TableFamilyINet)), []string{
		`meta nfproto ipv4 ip saddr 10.5.0.0/16 counter accept comment "vtepd: forward from 10.5.0.0/16"`,
		`meta nfproto ipv4 ip daddr 10.5.0.0/16 counter accept comment "vtepd: forward to 10.5.0.0/16"`,
	})
	var ipt []string
	for _, r := range ipForwardRules(testNetwork) {
		ipt = append(ipt, r.String())
	}
	equal(t, "iptables", ipt, []string{
		`-s 10.5.0.0/16 -m comment --comment "vtepd: forward from 10.5.0.0/16" -j ACCEPT`,
		`-d 10.5.0.0/16 -m comment --comment "vtepd: forward to 10.5.0.0/16" -j ACCEPT`,
	})
}

func TestPrefixes(t *testing.T) {
	log := zap.NewNop()
	for _, c := range []struct {
		network, subnet string
		err             string
	}{
		{"10.5.0.0/16", "10.5.48.1/24", ""}, // FLANNEL_SUBNET's way of writing it
		{"10.5.0.0/16", "10.6.48.0/24", "not inside"},
		{"10.5.0.0/16", "10.0.0.0/8", "not inside"},
		{"fd00::/64", "fd00::/80", "IPv4"},
		{"0.0.0.0/0", "10.5.48.0/24", "IPv4"},
	} {
		m, err := NewMasquerade(log, testDevice, netip.MustParsePrefix(c.network), netip.MustParsePrefix(c.subnet))
		if c.err == "" {
			if err != nil {
				t.Errorf("%s in %s: %v", c.subnet, c.network, err)
				continue
			}
			if m.subnet != testSubnet {
				t.Errorf("subnet %s read as %s", c.subnet, m.subnet)
			}
			m.Close()
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%s in %s: error %v, want one saying %q", c.subnet, c.network, err, c.err)
		}
	}
}

// A filter table as Docker leaves it, and what the forward rules make of it.
func TestIPLayout(t *testing.T) {
	rules := ipForwardRules(testNetwork)
	from := `-s 10.5.0.0/16 -m comment --comment "vtepd: forward from 10.5.0.0/16" -j ACCEPT`
	to := `-d 10.5.0.0/16 -m comment --comment "vtepd: forward to 10.5.0.0/16" -j ACCEPT`
	cases := []struct {
		name          string
		lines         map[string][]string
		target, other string
		missing       []string
	}{{
		name:   "no Docker, no rules",
		lines:  map[string][]string{chainForward: {"-P FORWARD DROP"}},
		target: chainForward,
		missing: []string{
			"iptables filter FORWARD: " + from,
			"iptables filter FORWARD: " + to,
		},
	}, {
		name:   "no Docker, rules in place",
		lines:  map[string][]string{chainForward: {"-P FORWARD DROP", "-A FORWARD " + from, "-A FORWARD " + to}},
		target: chainForward,
	}, {
		name: "Docker appeared after the rules went into FORWARD",
		lines: map[string][]string{
			chainForward:    {"-P FORWARD DROP", "-A FORWARD -j DOCKER-USER", "-A FORWARD " + from, "-A FORWARD " + to},
			chainDockerUser: {"-N DOCKER-USER", "-A DOCKER-USER -j RETURN"},
		},
		target: chainDockerUser, other: chainForward,
		missing: []string{
			"iptables filter DOCKER-USER: " + from,
			"iptables filter DOCKER-USER: " + to,
			"iptables filter FORWARD: " + from + " (belongs in DOCKER-USER)",
			"iptables filter FORWARD: " + to + " (belongs in DOCKER-USER)",
		},
	}, {
		name: "DOCKER-USER without the jump to it sees no packet",
		lines: map[string][]string{
			chainForward:    {"-P FORWARD DROP", "-A FORWARD " + from, "-A FORWARD " + to},
			chainDockerUser: {"-N DOCKER-USER"},
		},
		target: chainForward, other: chainDockerUser,
	}, {
		name: "in DOCKER-USER, another comment is not ours",
		lines: map[string][]string{
			chainForward: {"-P FORWARD DROP", "-A FORWARD -j DOCKER-USER"},
			chainDockerUser: {"-N DOCKER-USER", "-A DOCKER-USER " + from,
				`-A DOCKER-USER -d 10.5.0.0/16 -m comment --comment "vtepd: forward to 10.6.0.0/16" -j ACCEPT`,
				"-A DOCKER-USER -j RETURN"},
		},
		target: chainDockerUser, other: chainForward,
		missing: []string{"iptables filter DOCKER-USER: " + to},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := ipLayout{lines: c.lines, target: c.target, other: c.other}
			equal(t, "missing", l.missing(rules), c.missing)
		})
	}
}

// keep logs once per restore and once per run of failures, and returns when
// its context ends.
func TestReassertLoop(t *testing.T) {
	log, logs := testLogger(t)
	ctx, cancel := context.WithCancel(context.Background())
	// Each check takes its answer from the test, one tick at a time.
	type answer struct {
		missing []string
		err     error
	}
	answers := make(chan answer)
	var last answer
	restores := 0
	check := func() ([]string, error) {
		select {
		case last = <-answers:
		case <-ctx.Done(): // a tick after the last answer: all is well
			last = answer{}
		}
		return last.missing, last.err
	}
	restore := func() ([]string, error) {
		restores++
		return last.missing, nil
	}
	done := make(chan struct{})
	go func() {
		reassert(ctx, log, "test", time.Millisecond, check, restore)
		close(done)
	}()
	boom := errors.New("boom")
	for _, a := range []answer{
		{missing: []string{"gone"}},       // restored
		{},                                // all there
		{err: boom},                       // one warning
		{err: boom},                       // no second one
		{missing: []string{"gone again"}}, // restored, and working again
		{},
	} {
		answers <- a
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("keep did not return when its context ended")
	}
	if restores != 2 {
		t.Errorf("%d restores, want 2", restores)
	}
	if n := count(logs, "firewall rules restored"); n != 2 {
		t.Errorf("%d restore messages, want 2", n)
	}
	if n := count(logs, "cannot check firewall rules"); n != 1 {
		t.Errorf("%d failure messages, want 1", n)
	}
	if n := count(logs, "firewall rules in place again"); n != 1 {
		t.Errorf("%d recovery messages, want 1", n)
	}
}
