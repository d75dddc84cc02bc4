package line

import "testing"

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"shop/api-5c8 NO_SOCKET\t80":            "shop/api-5c8 NO_SOCKET\t80",
		"\x1b]0;pwned\x07\x1b[2J":               `\x1b]0;pwned\x07\x1b[2J`,
		"drop\nnode-z 12:00:00 drop 999 FORGED": `drop\x0anode-z 12:00:00 drop 999 FORGED`,
		"evil\u202egnp.exe":                     `evil\u202egnp.exe`,
		"\xff\xfe":                              `\xff\xfe`,
		"\u0085 next line":                      `\x85 next line`,
		"ünïcödé ok":                            "ünïcödé ok",
	} {
		if got := Printable(in); got != want {
			t.Errorf("Printable(%q) = %q, want %q", in, got, want)
		}
	}
}
