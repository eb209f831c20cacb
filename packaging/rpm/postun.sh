# %postun: restart after an upgrade ($1 >= 1); on erase ($1 = 0) remove the state
# (journal and lock), the rpm counterpart of a Debian purge. The user is kept.
systemctl daemon-reload >/dev/null 2>&1 || :
if [ "$1" -ge 1 ]; then
    systemctl try-restart enisync.service >/dev/null 2>&1 || :
else
    rm -rf /var/lib/enisync
fi
exit 0
