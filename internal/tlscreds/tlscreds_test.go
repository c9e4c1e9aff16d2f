package tlscreds

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseAuthz(t *testing.T) {
	ca, err := NewCA("ca", DefaultValidity())
	if err != nil {
		t.Fatal(err)
	}
	cert := func(cn string) *x509.Certificate {
		c, err := ca.Issue(cn, false, nil, DefaultValidity())
		if err != nil {
			t.Fatal(err)
		}
		return c.Cert
	}
	alice, bob, eve := cert("alice"), cert("bob"), cert("eve")
	a, err := ParseAuthz(strings.NewReader("# comment\n\nCN = alice , O=nvblk\n[export backup]\nCN=bob,O=nvblk\n[export ]\nCN=bob,O=nvblk\n"), "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cert   *x509.Certificate
		export string
		want   bool
	}{
		{alice, "backup", true}, {alice, "other", true}, {alice, "", true},
		{bob, "backup", true}, {bob, "", true}, {bob, "other", false},
		{eve, "backup", false}, {nil, "", false},
	} {
		if got := a.Allowed(c.export, c.cert); got != c.want {
			t.Errorf("Allowed(%q, %v) = %v", c.export, c.cert != nil && c.cert.Subject.CommonName != "", got)
		}
	}
	if !a.Known(bob) || a.Known(eve) {
		t.Error("Known")
	}
	for _, bad := range []string{"", "# nothing\n", "[exports x]\nCN=a\n", "alice\n"} {
		if _, err := ParseAuthz(strings.NewReader(bad), "bad"); err == nil || !strings.Contains(err.Error(), "bad") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestWriteFileModes(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("ca", DefaultValidity())
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteFile(dir, CACert, "ca-key.pem", false); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "ca-key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode: %v %v", fi.Mode(), err)
	}
	if err := ca.WriteFile(dir, CACert, "ca-key.pem", false); err == nil {
		t.Fatal("overwrote without asking")
	}
	if _, found, err := LoadCA(dir); !found || err != nil {
		t.Fatalf("LoadCA: %v %v", found, err)
	}
}
