package observe

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-mesh/sluice/sockops/flow"
)

// Errors a Client returns when it cannot reach the agent; they wrap the
// system's error, which says which case it is.
var (
	// ErrNotRunning means nothing serves on the socket path.
	ErrNotRunning = errors.New("the agent is not running, or the socket path is wrong")
	// ErrPermission means the caller may not open the socket.
	ErrPermission = errors.New("the agent's socket is root-only: run this as root")
)

// Client queries an agent's local API over its unix socket. A Client is
// safe for concurrent use.
type Client struct {
	path string
	http *http.Client
}

// Dial checks that an agent serves on socketPath and returns a Client of
// it. Its errors wrap ErrNotRunning or ErrPermission, and name the path.
func Dial(socketPath string) (*Client, error) {
	c, err := net.DialTimeout("unix", socketPath, 5*time.Second)
	if err != nil {
		return nil, dialError(socketPath, err)
	}
	c.Close()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", socketPath)
			if err != nil {
				return nil, dialError(socketPath, err)
			}
			return c, nil
		},
		DisableCompression: true,
		MaxIdleConns:       1,
	}
	return &Client{path: socketPath, http: &http.Client{Transport: tr}}, nil
}

// dialError says why connecting to the socket at path failed, and what to
// do about it.
func dialError(path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("connect to %s: no such socket: %w", path, ErrNotRunning)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("connect to %s: nothing listens on it: %w", path, ErrNotRunning)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("connect to %s: permission denied: %w", path, ErrPermission)
	}
	return fmt.Errorf("connect to the agent at %s: %w", path, err)
}

// Close closes the Client's idle connection.
func (c *Client) Close() error {
	c.http.CloseIdleConnections()
	return nil
}

// get sends GET path?query and returns the response if its status is 200.
func (c *Client) get(ctx context.Context, path string, query url.Values) (*http.Response, error) {
	u := url.URL{Scheme: "http", Host: "agent", Path: path, RawQuery: query.Encode()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if ue := (*url.Error)(nil); errors.As(err, &ue) && (errors.Is(err, ErrNotRunning) || errors.Is(err, ErrPermission)) {
			return nil, ue.Err // it names the socket already
		}
		return nil, fmt.Errorf("ask the agent at %s: %w", c.path, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("the agent at %s refused %s: %s", c.path, path, strings.TrimSpace(string(msg)))
	}
	return resp, nil
}

// Status returns the agent's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	resp, err := c.get(ctx, "/v1/status", nil)
	if err != nil {
		return Status{}, err
	}
	defer resp.Body.Close()
	var s Status
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return Status{}, fmt.Errorf("read status from the agent at %s: %w", c.path, err)
	}
	return s, nil
}

// Profile returns the agent's Go profile name ("heap", "goroutine",
// "allocs", ...), in the format go tool pprof reads.
func (c *Client) Profile(ctx context.Context, name string) ([]byte, error) {
	resp, err := c.get(ctx, "/debug/pprof/"+name, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("read the %s profile from the agent at %s: %w", name, c.path, err)
	}
	return data, nil
}

// Flows asks the agent for the flows q selects and calls fn with each, in
// order, from the calling goroutine. When the agent reports that flows
// were lost to this client (it read too slowly while following), Flows
// calls lost, if not nil, with how many, before the next flow. Flows
// returns when the agent ends the stream (nil), when ctx ends (ctx.Err()),
// or with the first error fn returns.
func (c *Client) Flows(ctx context.Context, q Query, fn func(flow.Flow) error, lost func(uint64)) error {
	resp, err := c.get(ctx, "/v1/flows", q.values())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var line struct {
			flow.Flow
			LostFlows *uint64 `json:"lost_flows"`
		}
		if err := dec.Decode(&line); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read flows from the agent at %s: %w", c.path, err)
		}
		if line.LostFlows != nil {
			if lost != nil {
				lost(*line.LostFlows)
			}
			continue
		}
		if err := fn(line.Flow); err != nil {
			return err
		}
	}
}
