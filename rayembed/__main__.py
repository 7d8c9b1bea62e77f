from rayembed.cli import main

raise SystemExit(main())
