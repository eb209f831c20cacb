# %pre: the service's system user must exist before the files it owns are unpacked.
getent group enisync >/dev/null || groupadd -r enisync
getent passwd enisync >/dev/null || \
    useradd -r -g enisync -d /var/lib/enisync -M -s /sbin/nologin -c "enisync node agent" enisync
exit 0
