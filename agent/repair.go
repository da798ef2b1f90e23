package agent

import (
	"context"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/miss"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// keepDevice keeps the device's address and routes in place until ctx is
// done. It only adds: the responder's reconciliation is the one place that
// deletes routes, under its lock, so that this never undoes an answer. The kernel deletes a device's routes when it goes down, and anyone
// may delete one by hand; without the overlay route, traffic to the overlay
// follows the default route into the underlay. Address and routes are put
// back as soon as a link or route change on the device is seen, and checked
// every 10 seconds in case a notification was lost. A device set down is
// left down, as its operator wanted; its routes come back when it comes up.
func keepDevice(ctx context.Context, dev *fabric.Device, gateway netip.Addr, routes []fabric.Route, r *miss.Responder, log *zap.Logger) {
	links := make(chan netlink.LinkUpdate, 64)
	routeUpdates := make(chan netlink.RouteUpdate, 256)
	done := make(chan struct{})
	defer func() {
		// The subscriptions' goroutines send until their sockets close;
		// drain them so none outlives this function.
		close(done)
		for range links {
		}
		for range routeUpdates {
		}
	}()
	onErr := func(err error) { log.Debug("device subscription", zap.Error(err)) }
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		log.Warn("cannot subscribe to link changes; checking the device every 10s only", zap.Error(err))
		close(links)
	}
	if err := netlink.RouteSubscribeWithOptions(routeUpdates, done, netlink.RouteSubscribeOptions{ErrorCallback: onErr}); err != nil {
		log.Warn("cannot subscribe to route changes; checking the device every 10s only", zap.Error(err))
		close(routeUpdates)
	}

	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	wasDown := false
	linkCh, routeCh := (<-chan netlink.LinkUpdate)(links), (<-chan netlink.RouteUpdate)(routeUpdates)
	for {
		select {
		case <-ctx.Done():
			return
		case u, ok := <-linkCh:
			if !ok {
				linkCh = nil
				continue
			}
			if int(u.Index) != dev.Index {
				continue
			}
		case u, ok := <-routeCh:
			if !ok {
				routeCh = nil
				continue
			}
			if u.LinkIndex != dev.Index || u.Type != unix.RTM_DELROUTE {
				continue
			}
		case <-tick.C:
		}

		up, err := dev.Up()
		if err != nil {
			log.Warn("checking the device failed", zap.String("device", dev.Name), zap.Error(err))
			continue
		}
		if !up {
			if !wasDown {
				log.Warn("device is down: the overlay carries nothing until it is up again", zap.String("device", dev.Name))
			}
			wasDown = true
			continue
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
		if changedRoutes {
			// The kernel drops every route of a device that goes down:
			// the host routes of the host answer mode too.
			if err := r.RestoreRoutes(); err != nil {
				log.Warn("restoring host routes failed", zap.String("device", dev.Name), zap.Error(err))
			}
		}
		if changedAddr || changedRoutes {
			log.Info("restored the device's address and routes", zap.String("device", dev.Name),
				zap.Bool("address", changedAddr), zap.Bool("routes", changedRoutes))
		}
	}
}
