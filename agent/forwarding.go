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

// watchForwarding warns once a family's forwarding has been off for
// forwardingGrace (without it, containers behind this host are unreachable
// through the overlay), says so when it comes back on, and warns again if
// it goes off later, until ctx is done. on reads the setting
// (fabric.IPForwarding, fabric.IPv6Forwarding), sysctl names it.
func watchForwarding(ctx context.Context, log *zap.Logger, family, sysctl string, on func() (bool, error), grace, every time.Duration) {
	log = log.With(zap.String("family", family), zap.String("sysctl", sysctl))
	tick := time.NewTicker(every)
	defer tick.Stop()
	var offSince time.Time
	warned := false
	for {
		if fwd, err := on(); err == nil {
			switch {
			case fwd && warned:
				log.Info("forwarding is on now: containers behind this host are reachable through the overlay", zap.Duration("was_off_for", time.Since(offSince).Round(time.Second)))
				warned, offSince = false, time.Time{}
			case fwd:
				offSince = time.Time{}
			case offSince.IsZero():
				offSince = time.Now()
			case !warned && time.Since(offSince) >= grace:
				log.Warn("forwarding is off in this namespace: containers behind this host are unreachable through the overlay (set the sysctl to 1; dockerd turns IPv4 forwarding on itself)",
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
