package line

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/tracer"
)

// A rule whose names carry what a terminal acts on: ESC in a chain, a C1
// CSI (U+009B) and a bidi override (U+202E) in a comment. The JSON line is
// the data: valid JSON, ESC escaped as JSON requires (\u001b, never a raw
// byte), C1 and bidi kept as they are (legal JSON), and decoded back
// exactly. The table row, what a person reads, shows none of them raw.
func TestHostileRuleNames(t *testing.T) {
	r := &netfilter.Rule{Backend: netfilter.BackendNftables, How: netfilter.HowCounter,
		Ref:        netfilter.Ref{Family: "ip", Table: "filter", Chain: "IN\x1b[2JPUT", Handle: 4, Comment: "a\u009b31m \u202eevil", Verdict: "DROP"},
		Candidates: nil}
	e := Event{Event: tracer.Event{Time: time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC), Type: tracer.Drop, Count: 1, Netns: 1, Family: 4, Proto: 17,
		Src: netip.MustParseAddrPort("10.0.0.1:5"), Dst: netip.MustParseAddrPort("10.0.0.2:9"), Reason: "NETFILTER_DROP"}, Rule: r}
	b := AppendEvent(nil, &e)
	if !json.Valid(b) {
		t.Fatalf("not JSON: %s", b)
	}
	s := string(b)
	if strings.ContainsRune(s, 0x1b) || !strings.Contains(s, `"chain":"IN\u001b[2JPUT"`) {
		t.Errorf("ESC not escaped as JSON wants: %q", s)
	}
	if !strings.Contains(s, `"comment":"a`+"\u009b"+`31m `+"\u202e"+`evil"`) {
		t.Errorf("the comment is not kept exactly: %q", s)
	}
	var d Decoder
	var l Line
	if err := d.Decode(b, &l); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(l.Event.Rule, r) {
		t.Errorf("decoded rule %+v, want %+v", l.Event.Rule, r)
	}
	for _, row := range []string{Printable(e.TableRow()), Printable(e.ClusterRow())} {
		if strings.ContainsAny(row, "\x1b\u009b\u202e") {
			t.Errorf("a row carries a raw control or override: %q", row)
		}
		if !strings.Contains(row, `IN\x1b[2JPUT`) {
			t.Errorf("a row does not show the chain escaped: %q", row)
		}
	}
}
