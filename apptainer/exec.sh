#!/bin/bash
# placeholder, replaced in issue 5
exec "$@"
