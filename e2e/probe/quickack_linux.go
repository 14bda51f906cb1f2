package probe

import "syscall"

// delayHandshakeACK turns quick ACKs off before connect, so that the
// kernel delays the handshake's final ACK and sends it with the first data.
func delayHandshakeACK(_, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 0)
	})
	if err != nil {
		return err
	}
	return serr
}
