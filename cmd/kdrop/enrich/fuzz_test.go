package enrich

import (
	"errors"
	"net/url"
	"testing"
)

// FuzzFilterFromQuery: any /events query parses without panicking, to a
// filter or to a FieldError that names a query parameter; a filter it
// accepts passes Trace or fails with a FieldError too, and never names a
// path for netns.
func FuzzFilterFromQuery(f *testing.F) {
	for _, s := range []string{"type=drop&reason=NO_SOCKET,NETFILTER_DROP", "cidr=10.0.0.0/8&cidr=fd00::/64&port=80&proto=tcp",
		"netns=4026531840&namespace=shop&pod=shop/web-0", "netns=/etc/shadow", "port=99999", "type=%ff", "cidr=10.0.0.0/33"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		flt, err := FilterFromQuery(q)
		var fe *FieldError
		if err != nil {
			if !errors.As(err, &fe) {
				t.Fatalf("%q: error %v is not a FieldError", raw, err)
			}
			return
		}
		if _, err := flt.Trace(); err != nil && !errors.As(err, &fe) {
			t.Fatalf("%q: Trace error %v is not a FieldError", raw, err)
		}
	})
}

// FuzzFilterTrace: the CLI's filter values (types, reasons, CIDRs, port,
// proto, netns, selector) are checked without panicking.
func FuzzFilterTrace(f *testing.F) {
	f.Add("drop", "NO_SOCKET", "10.0.0.0/8", uint16(80), "tcp", "4026531840")
	f.Add("overflow", "", "fd00::1", uint16(0), "132", "/run/netns/x")
	f.Add("x", "y", "300.1.1.1/40", uint16(1), "proto999", "-1")
	f.Fuzz(func(t *testing.T, typ, reason, cidr string, port uint16, proto, netns string) {
		flt := Filter{Types: []string{typ}, Reasons: []string{reason}, CIDRs: []string{cidr}, Port: port, Proto: proto, Netns: netns}
		if _, err := flt.Trace(); err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("%+v: error %v is not a FieldError", flt, err)
			}
		}
	})
}
