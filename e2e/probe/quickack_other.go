//go:build !linux

package probe

import (
	"errors"
	"syscall"
)

func delayHandshakeACK(_, _ string, _ syscall.RawConn) error {
	return errors.New("delaying the handshake ACK needs Linux")
}
