package fabric

import (
	"context"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Watch calls changed whenever the device may have lost its address or
// routes, or the underlay interface its direct routes, until ctx is done:
// when the kernel reports a change of either's link (it went down and up:
// the kernel drops every route of a device that goes down, and says
// nothing of it) or the deletion of one of their routes (anyone may delete
// one by hand), and every interval in case a notification was lost.
// changed runs on Watch's goroutine, one call at a time.
func (d *Device) Watch(ctx context.Context, interval time.Duration, changed func()) {
	links := make(chan netlink.LinkUpdate, 64)
	routes := make(chan netlink.RouteUpdate, 256)
	done := make(chan struct{})
	defer func() {
		// The subscriptions' goroutines send until their sockets close;
		// drain them so that none outlives Watch.
		close(done)
		for range links {
		}
		for range routes {
		}
	}()
	onErr := func(err error) { d.log.Debug("device subscription", zap.String("device", d.Name), zap.Error(err)) }
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		d.log.Warn("cannot subscribe to link changes; checking the device on a timer only", zap.String("device", d.Name), zap.Duration("every", interval), zap.Error(err))
		close(links)
	}
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{ErrorCallback: onErr}); err != nil {
		d.log.Warn("cannot subscribe to route changes; checking the device on a timer only", zap.String("device", d.Name), zap.Duration("every", interval), zap.Error(err))
		close(routes)
	}

	tick := time.NewTicker(interval)
	defer tick.Stop()
	linkCh, routeCh := (<-chan netlink.LinkUpdate)(links), (<-chan netlink.RouteUpdate)(routes)
	for {
		select {
		case <-ctx.Done():
			return
		case u, ok := <-linkCh:
			if !ok {
				linkCh = nil
				continue
			}
			if !d.watches(int(u.Index)) {
				continue
			}
		case u, ok := <-routeCh:
			if !ok {
				routeCh = nil
				continue
			}
			if !d.watches(u.LinkIndex) || u.Type != unix.RTM_DELROUTE {
				continue
			}
		case <-tick.C:
		}
		changed()
	}
}

// watches says whether Watch reports changes of the link with index i: the
// device, or its underlay interface.
func (d *Device) watches(i int) bool {
	return i == d.Index || d.underlay > 0 && i == d.underlay
}
