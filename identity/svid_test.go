package identity_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/identity"
	"github.com/sluice-mesh/sluice/identity/spiffetest"
)

const (
	agentID  = "spiffe://example.org/ns/sluice/sa/agent"
	serverID = "spiffe://example.org/ns/sluice/sa/controlplane"
)

// tlsServer accepts mTLS connections with ServerTLS and records the serial
// of each client certificate presented.
type tlsServer struct {
	addr string
	mu   sync.Mutex
	seen []int64
}

func startTLSServer(t *testing.T, ca *spiffetest.CA) *tlsServer {
	s := &tlsServer{}
	cfg := ca.ServerTLS(t, serverID, func(c *x509.Certificate) {
		s.mu.Lock()
		s.seen = append(s.seen, c.SerialNumber.Int64())
		s.mu.Unlock()
	})
	lis, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	s.addr = lis.Addr().String()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return s
}

func (s *tlsServer) serials() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int64(nil), s.seen...)
}

// dial opens a connection with cfg and exchanges a byte, which completes
// the handshake on both sides.
func dial(t *testing.T, addr string, cfg *tls.Config) error {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte{1}); err != nil {
		return err
	}
	_, err = c.Read(make([]byte, 1))
	return err
}

// The SVID from the Workload API authenticates the agent to a server that
// requires one; the server is accepted by its SPIFFE ID or trust domain,
// and refused when it is not the one expected; a rotated SVID is presented
// from the next handshake on.
func TestSVIDSource(t *testing.T) {
	ca := spiffetest.NewCA(t, "example.org")
	api := spiffetest.StartWorkloadAPI(t, ca, agentID)
	src, err := identity.OpenSVIDSource(context.Background(), strings.TrimPrefix(api.Addr, "unix://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if id, err := src.ID(); err != nil || id.String() != agentID {
		t.Fatalf("ID() = %v, %v; want %s", id, err, agentID)
	}
	srv := startTLSServer(t, ca)

	for _, want := range []string{serverID, "spiffe://example.org"} {
		cfg, err := src.ClientTLS(want)
		if err != nil {
			t.Fatal(err)
		}
		if err := dial(t, srv.addr, cfg); err != nil {
			t.Errorf("server authorized as %s: %v", want, err)
		}
	}
	for _, other := range []string{"spiffe://example.org/ns/sluice/sa/other", "spiffe://other.org"} {
		cfg, err := src.ClientTLS(other)
		if err != nil {
			t.Fatal(err)
		}
		if err := dial(t, srv.addr, cfg); err == nil {
			t.Errorf("a server that is not %s was accepted", other)
		}
	}

	first := api.Current().Certificates[0].SerialNumber.Int64()
	if got := srv.serials(); len(got) == 0 || got[0] != first {
		t.Fatalf("client serials seen %v, want %d first", got, first)
	}
	cfg, err := src.ClientTLS(serverID)
	if err != nil {
		t.Fatal(err)
	}
	rotated := api.Rotate().Certificates[0].SerialNumber.Int64()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := dial(t, srv.addr, cfg); err != nil {
			t.Fatal(err)
		}
		got := srv.serials()
		if got[len(got)-1] == rotated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rotated SVID (serial %d) was never presented: %v", rotated, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSVIDSourceErrors(t *testing.T) {
	if _, err := identity.OpenSVIDSource(context.Background(), "", time.Second); err == nil {
		t.Error("an empty address was accepted")
	}
	// Nothing listens there: the error says what was waited for.
	_, err := identity.OpenSVIDSource(context.Background(), t.TempDir()+"/none.sock", 300*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "no X.509 SVID") || !strings.Contains(err.Error(), "none.sock") {
		t.Errorf("no Workload API: err = %v", err)
	}
	for _, bad := range []string{"example.org", "https://example.org/x", "spiffe://"} {
		if _, err := identity.Authorizer(bad); err == nil || !strings.Contains(err.Error(), "not a SPIFFE ID") {
			t.Errorf("Authorizer(%q): err = %v", bad, err)
		}
	}
}
