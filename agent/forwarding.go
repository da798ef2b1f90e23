package agent

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// forwardingGrace is how long IPv4 forwarding may be off before vtepd warns:
// on a Docker host vtepd starts first and dockerd turns forwarding on a
// moment later, and a warning then would be false a second after it was
// written.
const forwardingGrace = 10 * time.Second

// forwardingCheck is how often forwarding is looked at.
const forwardingCheck = time.Second

// watchForwarding warns once forwarding has been off for forwardingGrace
// (without it, containers behind this host are unreachable through the
// overlay), says so when it comes back on, and warns again if it goes off
// later, until ctx is done. on reads the setting (fabric.IPForwarding).
func watchForwarding(ctx context.Context, log *zap.Logger, on func() (bool, error), grace, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	var offSince time.Time
	warned := false
	for {
		if fwd, err := on(); err == nil {
			switch {
			case fwd && warned:
				log.Info("IPv4 forwarding is on now: containers behind this host are reachable through the overlay", zap.Duration("was_off_for", time.Since(offSince).Round(time.Second)))
				warned, offSince = false, time.Time{}
			case fwd:
				offSince = time.Time{}
			case offSince.IsZero():
				offSince = time.Now()
			case !warned && time.Since(offSince) >= grace:
				log.Warn("IPv4 forwarding is off in this namespace: containers behind this host are unreachable through the overlay (sysctl net.ipv4.ip_forward=1; dockerd turns it on itself)",
					zap.Duration("off_for", time.Since(offSince).Round(time.Second)))
				warned = true
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
