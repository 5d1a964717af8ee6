from koalarization.cli import main

raise SystemExit(main())
