//go:build !linux

package kubeproxy

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

// errNeedsLinux is returned by everything that runs a tool: network
// namespaces, iptables and nftables are Linux's.
var errNeedsLinux = errors.New("kubeproxy: loading rules needs Linux (network namespaces, iptables, nftables)")

// Load needs Linux; elsewhere it returns an error.
func Load(ctx context.Context, netns string, mode Mode, svcs []Service, podCIDR netip.Prefix) (time.Duration, error) {
	return 0, errNeedsLinux
}

// Flush needs Linux; elsewhere it returns an error.
func Flush(ctx context.Context, netns string, mode Mode) error { return errNeedsLinux }

// Backend needs Linux; elsewhere it returns an error.
func Backend(ctx context.Context, mode Mode) (string, error) { return "", errNeedsLinux }
