package l7_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluice-mesh/sluice/dataplane/l7"
	"github.com/sluice-mesh/sluice/dataplane/model"
)

// TestH2CUpgrade upgrades an HTTP/1.1 connection to HTTP/2 (RFC 7540,
// 3.2): the upgrade request is answered as stream 1, over HTTP/2, and
// goes upstream as HTTP/2 to a cluster that uses the client's protocol.
func TestH2CUpgrade(t *testing.T) {
	b := newH2Backend(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		io.WriteString(w, r.Proto+" "+r.Method+" "+r.URL.Path+" "+string(body)+" upgrade="+r.Header.Get("Upgrade"))
	})
	f := start(t, l7.Options{}, service([]model.HTTPRoute{route("web", prefix("/"))}, protoCluster("web", model.UpstreamUseDownstream, endpoint(t, b.URL))))
	conn, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	settings := make([]byte, 6)
	binary.BigEndian.PutUint16(settings, uint16(http2.SettingMaxConcurrentStreams))
	binary.BigEndian.PutUint32(settings[2:], 100)
	io.WriteString(conn, "POST /up HTTP/1.1\r\nHost: web.shop\r\nContent-Length: 5\r\n"+
		"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"+
		"HTTP2-Settings: "+base64.RawURLEncoding.EncodeToString(settings)+"\r\n\r\nhello")
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 101 || res.Header.Get("Upgrade") != "h2c" {
		t.Fatalf("got %d, Upgrade %q; want 101 to h2c", res.StatusCode, res.Header.Get("Upgrade"))
	}
	io.WriteString(conn, http2.ClientPreface)
	fr := http2.NewFramer(conn, br)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	h2res := readH2Response(t, fr, 1)
	status, body := h2res.field(h2res.header, ":status"), h2res.body.String()
	if want := "HTTP/2.0 POST /up hello upgrade="; status != "200" || body != want {
		t.Errorf("got %s %q, want 200 %q", status, body, want)
	}
	if r := f.waitRecords(1)[0]; r.Proto != "HTTP/2.0" || r.Code != 200 {
		t.Errorf("record: %s, code %d", r.Proto, r.Code)
	}

	// The upgraded connection is the proxy's to end on Shutdown: a GOAWAY,
	// then the close.
	shut := make(chan error, 1)
	go func() { shut <- f.proxy.Shutdown(context.Background()) }()
	for {
		frame, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("before GOAWAY: %v", err)
		}
		if g, ok := frame.(*http2.GoAwayFrame); ok {
			if g.ErrCode != http2.ErrCodeNo {
				t.Errorf("GOAWAY %v", g.ErrCode)
			}
			break
		}
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	// Shutdown returned once the connection was closed; a short deadline
	// tells closed from still open.
	conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := br.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after Shutdown, reading the connection: %v; want EOF", err)
	}
}

// TestH2CUpgradeIgnored serves an upgrade request with a body too large
// to read ahead as HTTP/1.1, and does not pass the upgrade on.
func TestH2CUpgradeIgnored(t *testing.T) {
	b := newH2Backend(t, func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%s upgrade=%s %d", r.Proto, r.Header.Get("Upgrade"), n)
	})
	f := start(t, l7.Options{}, service([]model.HTTPRoute{route("web", prefix("/"))}, cluster("web", endpoint(t, b.URL))))
	req, _ := http.NewRequest("POST", f.url("/"), strings.NewReader(strings.Repeat("x", 100<<10)))
	req.Header.Set("Connection", "Upgrade, HTTP2-Settings")
	req.Header.Set("Upgrade", "h2c")
	req.Header.Set("HTTP2-Settings", "")
	r := f.do(f.client(), req)
	if r.code != 200 || r.res.Proto != "HTTP/1.1" || r.body != "HTTP/1.1 upgrade= 102400" {
		t.Errorf("got %d %s %q", r.code, r.res.Proto, r.body)
	}
}

// h2Response is what a stream received, frame by frame.
type h2Response struct {
	header      []hpack.HeaderField
	headerEnded bool // the one HEADERS frame ended the stream: no body, no trailers
	body        bytes.Buffer
	trailer     []hpack.HeaderField
}

func (r *h2Response) field(fs []hpack.HeaderField, name string) string {
	for _, f := range fs {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// readH2Response reads frames until stream id ends, answering SETTINGS.
func readH2Response(t *testing.T, fr *http2.Framer, id uint32) *h2Response {
	t.Helper()
	res := &h2Response{}
	for {
		frame, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		ended := false
		switch frame := frame.(type) {
		case *http2.SettingsFrame:
			if !frame.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			if frame.StreamID != id {
				t.Fatalf("headers on stream %d, want %d", frame.StreamID, id)
			}
			if res.header == nil {
				res.header = frame.Fields
				res.headerEnded = frame.StreamEnded()
			} else {
				res.trailer = frame.Fields
			}
			ended = frame.StreamEnded()
		case *http2.DataFrame:
			res.body.Write(frame.Data())
			ended = frame.StreamEnded()
		case *http2.GoAwayFrame:
			t.Fatalf("GOAWAY %v", frame.ErrCode)
		case *http2.RSTStreamFrame:
			t.Fatalf("RST_STREAM %v", frame.ErrCode)
		}
		if ended {
			return res
		}
	}
}

// dialH2 opens a prior-knowledge HTTP/2 connection to the proxy.
func dialH2(t *testing.T, f *fixture) *http2.Framer {
	conn, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, http2.ClientPreface)
	fr := http2.NewFramer(conn, conn)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return fr
}

// writeH2Request sends a request with body on stream id.
func writeH2Request(t *testing.T, fr *http2.Framer, id uint32, body []byte, fields ...string) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for i := 0; i+1 < len(fields); i += 2 {
		enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: len(body) == 0}); err != nil {
		t.Fatal(err)
	}
	if len(body) > 0 {
		if err := fr.WriteData(id, true, body); err != nil {
			t.Fatal(err)
		}
	}
}
