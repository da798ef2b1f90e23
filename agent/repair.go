package agent

import (
	"context"
	"net/netip"
	"time"

	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/miss"
	"go.uber.org/zap"
)

// repairInterval is how often the device is checked when no notification
// says it changed: in case one was lost.
const repairInterval = 10 * time.Second

// repairDevice puts the device's address and routes back whenever they go,
// until ctx is done. It only adds: the responder's reconciliation is the one
// place that deletes routes, under its lock, so that this never undoes an
// answer. The kernel deletes a device's routes when it goes down, and anyone
// may delete one by hand; without the overlay route, traffic to the overlay
// follows the default route into the underlay. A device set down is left
// down, as its operator wanted; its routes come back when it comes up.
func repairDevice(ctx context.Context, dev *fabric.Device, gateway netip.Addr, routes []fabric.Route, r *miss.Responder, log *zap.Logger) {
	wasDown := false
	dev.Watch(ctx, repairInterval, func() {
		up, err := dev.Up()
		if err != nil {
			log.Warn("checking the device failed", zap.String("device", dev.Name), zap.Error(err))
			return
		}
		if !up {
			if !wasDown {
				log.Warn("device is down: the overlay carries nothing until it is up again", zap.String("device", dev.Name))
			}
			wasDown = true
			return
		}
		wasDown = false
		changedAddr, err := dev.SetAddress(gateway)
		if err != nil {
			log.Warn("restoring the device's address failed", zap.String("device", dev.Name), zap.Error(err))
		}
		changedRoutes, err := dev.EnsureRoutes(gateway, routes)
		if err != nil {
			log.Warn("restoring the device's routes failed", zap.String("device", dev.Name), zap.Error(err))
		}
		// The kernel drops every route of a device that goes down: the
		// host routes of the host answer mode with the device's, the
		// direct routes with the underlay interface's (whose flap leaves
		// the device's own routes alone).
		if err := r.RestoreRoutes(); err != nil {
			log.Warn("restoring host and direct routes failed", zap.String("device", dev.Name), zap.Error(err))
		}
		if changedAddr || changedRoutes {
			log.Info("restored the device's address and routes", zap.String("device", dev.Name),
				zap.Bool("address", changedAddr), zap.Bool("routes", changedRoutes))
		}
	})
}
