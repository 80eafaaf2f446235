"""Test bed for k3s-registry: real OpenSSH hosts, a real registry, OCI images.

Everything here starts real programs (``sshd``, ``docker-registry``,
``skopeo``) in private mount namespaces on loopback addresses, so that the
program under test can be exercised end to end without touching the machine's
own files.  It needs root, ``unshare``/``nsenter`` (util-linux) and the Debian
packages ``openssh-server``, ``docker-registry``, ``skopeo``, ``sudo``,
``ca-certificates`` and ``curl``.

Modules:

* :mod:`.sshnodes` -- one real ``sshd`` per test node, each with a private
  view of ``/etc``, ``/var/lib``, ``/etc/hosts``, the CA store and init tools.
* :mod:`.sshexec` -- run a command over SSH the way pulumi-command does.
* :mod:`.registry` -- the registry started like its Kubernetes pod would be.
* :mod:`.oci` -- build a tiny OCI image layout and push it with skopeo.
"""
