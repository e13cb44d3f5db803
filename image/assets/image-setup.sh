#!/bin/sh
# Cairn: configure the root filesystem inside the build chroot (run once by `cairn-image build`
# from an mmdebstrap customize hook, after the files under /etc and /usr/lib/cairn were copied in).
set -eu
chmod 0755 /etc/initramfs-tools/hooks/cairn-verity /etc/initramfs-tools/scripts/local-top/cairn-verity
chmod 0755 /usr/lib/cairn/boot-report /usr/lib/cairn/rauc-bootloader /usr/lib/cairn/trial-boot-check

systemctl enable systemd-networkd.service systemd-resolved.service systemd-networkd-wait-online.service
systemctl enable var.mount tmp.mount data.mount efi.mount cairn-firewall.service cairn-clock.service cairn-agent.service cairn-apps-stop.service cairn-boot-report.service
# NTP (servers from the recipe, from DHCP through networkd, and per site from central); the agent
# corrects large offsets from central's signed time, which needs no NTP server at all.
systemctl enable systemd-timesyncd.service
# Trial boots (after an update) that nobody marks good are rebooted; see trial-boot-check.
systemctl enable cairn-trial-boot.timer
# A getty on ttyS0 hangs up the console the tests and operators read; keep only tty1 (no autologin).
systemctl mask serial-getty@ttyS0.service
# No package updates from the mirror at runtime: updates are signed RAUC bundles.
systemctl mask apt-daily.timer apt-daily-upgrade.timer
# systemd-pcrphase extends PCR 11 after boot (sysinit, ready): the disk key (sealed to PCR 11) could
# then no longer be unsealed by the running system to re-seal it for a signed update's new UKI.
systemctl mask systemd-pcrphase.service systemd-pcrphase-sysinit.service systemd-pcrphase-initrd.service
systemctl set-default multi-user.target

# An empty machine-id on a read-only root: systemd makes a transient one on every boot.
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
mkdir -p /data /efi
echo cairn > /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\tcairn\n::1\tlocalhost ip6-localhost ip6-loopback\n' > /etc/hosts
printf '# Cairn: no fstab entries; mounts are systemd units (var.mount, tmp.mount, data.mount).\n' > /etc/fstab

update-initramfs -u -k all
