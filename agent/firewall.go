package agent

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/vtepd/vtepd/firewall"
	"go.uber.org/zap"
)

// ErrHandover is the cause to cancel Run's context with when another vtepd
// takes over at once (vtepd run re-executing itself on SIGHUP): the agent
// stops as on any clean stop but leaves its firewall rules in place, so that
// forwarding and masquerading go on without a gap.
var ErrHandover = errors.New("agent: handing over to a new vtepd")

// DefaultFirewallResync is how often the rules are checked and, where
// something removed them (a restarting dockerd flushes DOCKER-USER),
// restored, unless Config.FirewallResync says otherwise: flannel's
// --iptables-resync default.
const DefaultFirewallResync = 5 * time.Second

// filters are the agent's packet-filter rules: the forward rules that let
// overlay traffic through a FORWARD policy of DROP, and the ip-masq rules.
// They follow the flags at every start: rules of a flag now off are removed,
// whatever an earlier vtepd left. A clean stop removes them, as an operator
// who stops vtepd expects of its rules; a handover keeps them.
type filters struct {
	log      *zap.Logger
	device   string // the VXLAN device: whose ip-masq table it is
	network  netip.Prefix
	forward  *firewall.Forward // nil when --forward-rules is off
	wantMasq bool
	resync   time.Duration

	mu   sync.Mutex           // for /status, which reads masq while start-up sets it
	masq *firewall.Masquerade // nil until the subnet is known, or when --ip-masq is off
}

// startFilters puts the forward rules in place, or removes them if the flag
// is off. A failure is logged, not returned: a host whose FORWARD policy
// accepts does not need the rules, and reassert retries for one that does.
// device is the VXLAN device this vtepd drives: the ip-masq rules are in a
// table of its own, so that a second vtepd on the host, for a second
// overlay, keeps its own.
func startFilters(cfg Config, device string, network netip.Prefix, log *zap.Logger) *filters {
	f := &filters{log: log, device: device, network: network, wantMasq: cfg.IPMasq, resync: cfg.FirewallResync}
	if f.resync <= 0 {
		f.resync = DefaultFirewallResync
	}
	if !network.IsValid() {
		// An IPv6-only overlay: the rules are IPv4 ones (installForwardRules
		// says so once); none to write.
		return f
	}
	fwd, err := firewall.NewForward(log, network)
	if err != nil {
		log.Error("forward rules unavailable", zap.Error(err))
		return f
	}
	if !cfg.ForwardRules {
		if err := fwd.Remove(); err != nil {
			log.Warn("removing forward rules left by an earlier vtepd", zap.Error(err))
		}
		fwd.Close()
		return f
	}
	f.forward = fwd
	if err := fwd.Ensure(); err != nil {
		log.Error("forward rules not in place yet; retrying", zap.Error(err), zap.Duration("every", f.resync))
	}
	return f
}

// masquerade puts the ip-masq rules for this host's subnet in place, or
// removes any an earlier vtepd left if --ip-masq is off.
func (f *filters) masquerade(subnet netip.Prefix) {
	if !f.network.IsValid() {
		return // an IPv6-only overlay (see startFilters)
	}
	m, err := firewall.NewMasquerade(f.log, f.device, f.network, subnet)
	if err != nil {
		f.log.Error("ip-masq rules unavailable", zap.Error(err))
		return
	}
	if !f.wantMasq {
		if err := m.Remove(); err != nil {
			f.log.Warn("removing ip-masq rules left by an earlier vtepd", zap.Error(err))
		}
		m.Close()
		return
	}
	f.mu.Lock()
	f.masq = m
	f.mu.Unlock()
	if err := m.Ensure(); err != nil {
		f.log.Error("ip-masq rules not in place yet; retrying", zap.Error(err), zap.Duration("every", f.resync))
	}
}

// reassert puts back, until ctx ends, whatever something else removes of the
// rules (a restarting dockerd flushes DOCKER-USER).
func (f *filters) reassert(ctx context.Context) {
	done := make(chan struct{})
	if f.masq != nil {
		go func() {
			defer close(done)
			f.masq.Reassert(ctx, f.resync)
		}()
	} else {
		close(done)
	}
	if f.forward != nil {
		f.forward.Reassert(ctx, f.resync)
	}
	<-done
}

// stop releases the rules' sockets, and removes the rules if remove is set.
// It runs after reassert has returned.
func (f *filters) stop(remove bool) {
	var owners []ruleOwner
	if f.forward != nil {
		owners = append(owners, f.forward)
	}
	if f.masq != nil {
		owners = append(owners, f.masq)
	}
	for _, r := range owners {
		if remove {
			if err := r.Remove(); err != nil {
				f.log.Warn("removing firewall rules on stop", zap.Error(err))
			}
		}
		r.Close()
	}
	if !remove && len(owners) > 0 {
		f.log.Info("firewall rules left in place for the next vtepd")
	}
}

type ruleOwner interface {
	Remove() error
	Close() error
}

// describe is the filters' part of /status.
func (f *filters) describe() FirewallStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := FirewallStatus{IPMasq: f.masq != nil, Forward: "off"}
	if f.masq != nil {
		s.MasqTable = f.masq.Table()
	}
	if f.forward != nil {
		s.Forward = f.forward.Backend()
	}
	return s
}

// FirewallStatus says which rules vtepd keeps.
type FirewallStatus struct {
	// Forward names the forward rules' backend ("off" when disabled).
	Forward string `json:"forward_rules"`
	IPMasq  bool   `json:"ip_masq"`
	// MasqTable is the nftables table of the ip-masq rules, as nft names
	// it ("ip vtepd-nat-flannel.1"), when IPMasq.
	MasqTable string `json:"ip_masq_table,omitempty"`
}
