//go:build !linux

package l7

import "net"

// alive takes every idle connection as alive where it cannot peek at its
// socket; a stale one is caught by the retry of RoundTrip.
func alive(net.Conn) bool { return true }
